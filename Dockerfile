# listener next to a PostgreSQL server (see docker-compose.yml). The image holds the package and the
# example workflows (the package listener_examples); mount a directory with your listener.yaml and your
# workflow modules over /config (its directory is importable) and set LISTENER_CONFIG=/config/listener.yaml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY listener ./listener
COPY sql ./sql
COPY listener_examples ./listener_examples
RUN pip install --no-cache-dir . && rm -rf /app/listener /app/sql /app/listener_examples
WORKDIR /config
ENV LISTENER_CONFIG=/config/listener.yaml
ENTRYPOINT ["listener"]
CMD ["run"]
