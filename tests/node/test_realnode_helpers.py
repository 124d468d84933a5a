"""The node manager's pure helpers (no node needed): parsers that decide what teardown deletes, and the
generated configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.node.realnode import (
    IMAGE_NAMES,
    NodeError,
    archive_identity,
    chains_in,
    containerd_config,
    corefile,
    guard_rules,
    image_list,
    jumps_to,
    kubelet_config,
    mounts_under,
    parse_image_manifest,
    uplinks,
)

MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
100 22 0:50 / /tmp/node-x/kubelet rw shared:50 - ext4 /dev/vda rw
101 100 0:51 / /tmp/node-x/kubelet/pods/a/volumes/kubernetes.io~projected/kube-api-access-1 rw - tmpfs tmpfs rw
102 22 0:52 / /tmp/node-x/containerd/state/io.containerd.grpc.v1.cri/sandboxes/s1/shm rw - tmpfs shm rw
103 22 0:53 / /tmp/node-xy/other rw - tmpfs tmpfs rw
104 22 0:54 / /tmp/node-x/with\\040space rw - tmpfs tmpfs rw
"""


def test_mounts_under_lists_only_the_tree_deepest_first() -> None:
    found = mounts_under(MOUNTINFO, Path("/tmp/node-x"))
    assert len(found) == 4
    assert "/tmp/node-xy/other" not in found  # a sibling with the same prefix is not ours
    assert "/tmp/node-x/with space" in found
    assert found.index("/tmp/node-x/kubelet") > found.index(
        "/tmp/node-x/kubelet/pods/a/volumes/kubernetes.io~projected/kube-api-access-1")
    assert mounts_under(MOUNTINFO, Path("/tmp/node-x/kubelet")) == [
        "/tmp/node-x/kubelet/pods/a/volumes/kubernetes.io~projected/kube-api-access-1", "/tmp/node-x/kubelet"]


RULES = """\
-P INPUT ACCEPT
-P OUTPUT ACCEPT
-N KUBE-FIREWALL
-N KUBE-KUBELET-CANARY
-N OTHER
-A INPUT -j KUBE-FIREWALL
-A OUTPUT -m comment --comment "x y" -j KUBE-FIREWALL
-A OUTPUT -j OTHER
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
"""


def test_iptables_parsers_find_chains_and_the_jumps_into_them() -> None:
    assert chains_in(RULES) == {"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "OTHER"}
    jumps = jumps_to(RULES, {"KUBE-FIREWALL"})
    assert jumps == [["INPUT", "-j", "KUBE-FIREWALL"],
                     ["OUTPUT", "-m", "comment", "--comment", "x y", "-j", "KUBE-FIREWALL"]]
    assert jumps_to(RULES, {"NOPE"}) == []


def test_guard_rules_are_recognised_by_their_comment() -> None:
    rules = ('-P FORWARD ACCEPT\n'
             '-A FORWARD -o eth0 -m comment --comment xqueue-k8s-node-guard -j DROP\n'
             '-A FORWARD -o eth1 -j DROP\n')
    assert guard_rules(rules) == [["FORWARD", "-o", "eth0", "-m", "comment", "--comment",
                                   "xqueue-k8s-node-guard", "-j", "DROP"]]


def test_uplinks_are_every_interface_but_loopback_and_the_bridge() -> None:
    links = [{"ifname": "lo", "link_type": "loopback"}, {"ifname": "eth0", "link_type": "ether"},
             {"ifname": "xqk8s0", "link_type": "ether"}, {"ifname": "ifb0", "link_type": "ether"}]
    assert uplinks(links, "xqk8s0") == ["eth0", "ifb0"]


def test_image_manifest_is_validated(tmp_path: Path) -> None:
    good = {n: {"ref": f"localhost/xqueue-k8s/{n}:t", "archive": f"/abs/{n}.tar"} for n in IMAGE_NAMES}
    images = parse_image_manifest(json.dumps(good))
    assert images["pause"].ref == "localhost/xqueue-k8s/pause:t"
    assert images["pause"].archive == Path("/abs/pause.tar")
    with pytest.raises(NodeError, match="lacks postgresql"):
        parse_image_manifest(json.dumps({k: v for k, v in good.items() if k != "postgresql"}))
    with pytest.raises(NodeError, match="absolute"):
        parse_image_manifest(json.dumps({**good, "pause": {"ref": "p", "archive": "rel.tar"}}))
    with pytest.raises(NodeError, match="not JSON"):
        parse_image_manifest("building...\n{}")


def test_generated_configs_carry_the_settings_that_matter() -> None:
    toml = containerd_config(root=Path("/w/root"), state=Path("/w/state"), socket_path=Path("/w/c.sock"),
                             opt_dir=Path("/w/opt"), runc_root=Path("/w/runc"), cni_conf_dir=Path("/w/cni"),
                             sandbox_image="localhost/xqueue-k8s/pause:t")
    for setting in ("restrict_oom_score_adj = true", "netns_mounts_under_state_dir = true",
                    "disable_apparmor = true", 'snapshotter = "overlayfs"', "SystemdCgroup = false",
                    'sandbox_image = "localhost/xqueue-k8s/pause:t"', 'Root = "/w/runc"'):
        assert setting in toml
    kubelet = kubelet_config(gateway="10.85.0.1", port=1, healthz_port=2, ca_file=Path("/ca"),
                             tls_cert=Path("/c"), tls_key=Path("/k"), runtime_socket=Path("/s"),
                             resolv_conf=Path("/r"), pod_logs_dir=Path("/l"), volume_plugin_dir=Path("/v"))
    assert kubelet["failCgroupV1"] is False
    assert kubelet["readOnlyPort"] == 0
    assert kubelet["authentication"]["anonymous"]["enabled"] is False
    assert kubelet["clusterDNS"] == ["10.85.0.1"]
    dns = corefile(gateway="10.85.0.1", ready_port=5, kubeconfig=Path("/kc"), context="c")
    assert "forward" not in dns
    assert "bind 10.85.0.1" in dns and "kubernetes cluster.local" in dns


def test_image_list_maps_refs_to_digests() -> None:
    out = ("REF TYPE DIGEST SIZE PLATFORMS LABELS\n"
           "localhost/xqueue-k8s/pause:t application/vnd.docker.distribution.manifest.v2+json sha256:aa 1.4 MiB "
           "linux/amd64 io.cri-containerd.image=managed\n"
           "sha256:bb application/vnd.docker.distribution.manifest.v2+json sha256:aa 1.4 MiB linux/amd64 -\n")
    assert image_list(out) == {"localhost/xqueue-k8s/pause:t": "sha256:aa", "sha256:bb": "sha256:aa"}


def test_archive_identity_is_the_image_config_not_the_file_time(tmp_path: Path) -> None:
    import io
    import os
    import tarfile

    archive = tmp_path / "image.tar"
    manifest = json.dumps([{"Config": "abc.json", "RepoTags": ["localhost/x:1"], "Layers": []}]).encode()
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    first = archive_identity(archive)
    os.utime(archive, (1, 1))
    assert archive_identity(archive) == first == "abc.json"
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar")
    assert archive_identity(broken).startswith(f"{broken}:9:")
