# listener next to a PostgreSQL server (see docker-compose.yml). The image holds the package and the
# example workflows; mount your own rules file and workflows package over /app.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY listener ./listener
COPY sql ./sql
COPY workflows ./workflows
RUN pip install --no-cache-dir .
ENTRYPOINT ["listener"]
CMD ["run"]
