# jfwatch container: non-root, read-only-root friendly.  Build: docker build -t jfwatch .
#   docker run --read-only -v /srv/jellyfin/config/log:/logs/jellyfin:ro \
#     -v jfwatch-state:/var/lib/jfwatch -v jfwatch-feed:/var/log/jfwatch \
#     -v ./jfwatch.yml:/etc/jfwatch/jfwatch.yml:ro -p 127.0.0.1:9725:9725 jfwatch
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY jfwatch ./jfwatch
COPY rules ./rules
COPY demo ./demo
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /dist

FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 JFWATCH_CONFIG=/etc/jfwatch/jfwatch.yml
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl \
    && useradd --system --uid 10001 --home-dir /var/lib/jfwatch --shell /usr/sbin/nologin jfwatch \
    && mkdir -p /var/lib/jfwatch /var/log/jfwatch /etc/jfwatch/rules.d /logs \
    && chown jfwatch:jfwatch /var/lib/jfwatch /var/log/jfwatch
COPY docker/jfwatch.container.yml /etc/jfwatch/jfwatch.yml
COPY docker/entrypoint.sh /usr/local/bin/jfwatch-entrypoint
USER jfwatch
VOLUME ["/var/lib/jfwatch", "/var/log/jfwatch"]
EXPOSE 9725
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9725/health', timeout=4).status == 200 else 1)"
ENTRYPOINT ["/usr/local/bin/jfwatch-entrypoint"]
