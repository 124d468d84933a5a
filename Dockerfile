# Image for the XQueue server and the operator (one distribution, two entry points):
#   server:   xqueue-server          operator: coursegrader-operator
# The grader has its own image: grader_image/Dockerfile.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin xqueue
WORKDIR /app
COPY pyproject.toml README.md ./
COPY xqueue_server ./xqueue_server
COPY grader_image/xqueue_grader ./grader_image/xqueue_grader
COPY operator/coursegrader_operator ./operator/coursegrader_operator
RUN pip install --no-compile . && rm -rf /root/.cache
USER 10001
EXPOSE 18040
# Local file storage needs a writable volume at XQUEUE_STORAGE_DIR; S3 storage needs none.
ENV XQUEUE_HOST=0.0.0.0 XQUEUE_STORAGE_DIR=/data/files
CMD ["xqueue-server"]
