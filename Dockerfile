# jfwatch container: non-root (numeric UID), read-only-root friendly.  Build: docker build -t jfwatch .
#   docker run --read-only -v /srv/jellyfin/config/log:/logs/jellyfin:ro \
#     -v jfwatch-state:/var/lib/jfwatch -v jfwatch-feed:/var/log/jfwatch \
#     -p 127.0.0.1:9725:9725 jfwatch
# The built-in config (docker/jfwatch.container.yml) uses the container's paths; mount
# your own at /etc/jfwatch/jfwatch.yml to change it.
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jfwatch ./jfwatch
COPY rules ./rules
COPY demo ./demo
RUN pip install --no-cache-dir build==1.2.2.post1 hatchling==1.27.0 \
    && python -m build --wheel --no-isolation --outdir /dist

FROM python:3.12-slim
LABEL org.opencontainers.image.title="jfwatch" \
      org.opencontainers.image.description="Security log monitor and alerting daemon for self-hosted Jellyfin servers" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/jfwatch/jfwatch"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 JFWATCH_CONFIG=/etc/jfwatch/jfwatch.yml
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl \
    && useradd --system --uid 10001 --home-dir /var/lib/jfwatch --shell /usr/sbin/nologin jfwatch \
    && mkdir -p /var/lib/jfwatch /var/log/jfwatch /etc/jfwatch/rules.d /logs \
    && install -m 0640 -o 10001 -g 10001 /dev/null /var/log/jfwatch/bans.log \
    && chown 10001:10001 /var/lib/jfwatch /var/log/jfwatch
COPY docker/jfwatch.container.yml /etc/jfwatch/jfwatch.yml
COPY docker/entrypoint.sh /usr/local/bin/jfwatch-entrypoint
COPY docker/healthcheck.py /usr/local/bin/jfwatch-healthcheck
USER 10001:10001
VOLUME ["/var/lib/jfwatch", "/var/log/jfwatch"]
EXPOSE 9725
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["python", "/usr/local/bin/jfwatch-healthcheck"]
ENTRYPOINT ["/usr/local/bin/jfwatch-entrypoint"]
