"""`coursegrader-operator`: run the operator with its handlers and settings.

This is `kopf run --standalone -m coursegrader_operator.handlers` with the namespaces and the liveness
endpoint taken from the environment (config.py), so the chart configures everything in one place.
The settings themselves are applied by the startup handler (handlers.apply_settings), which also
covers `kopf run` and KopfRunner in tests. The operator always runs standalone (one replica,
Recreate strategy): kopf has no leader election, and two peers of equal priority freeze each other.
"""

from __future__ import annotations

import argparse

from kopf import cli

from .config import OperatorConfig

# kopf's log formats; the chart's values.schema.json allows exactly these for operator.logFormat.
LOG_FORMATS = ("plain", "full", "json")


def kopf_args(config: OperatorConfig, *, verbose: bool = False, log_format: str = "full") -> list[str]:
    args = ["run", "--standalone", "-m", "coursegrader_operator.handlers", "--log-format", log_format]
    if config.namespaces:
        for ns in config.namespaces:
            args += ["--namespace", ns]
    else:
        args.append("--all-namespaces")
    if config.liveness:
        args += ["--liveness", config.liveness]
    if verbose:
        args.append("--verbose")
    return args


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="coursegrader-operator",
                                     description="Run the CourseGrader operator (configured by XQOP_* "
                                                 "environment variables).")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", default="full", choices=LOG_FORMATS)
    args = parser.parse_args(argv)
    config = OperatorConfig.from_env()
    cli.main(args=kopf_args(config, verbose=args.verbose, log_format=args.log_format),
             prog_name="coursegrader-operator")


if __name__ == "__main__":
    main()
