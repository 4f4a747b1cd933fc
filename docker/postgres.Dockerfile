# PostgreSQL 17 with the pgmq and pg_cron extensions from the PostgreSQL Debian packages
# (the official image already has that package source configured).
FROM postgres:17
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-17-pgmq postgresql-17-cron \
    && rm -rf /var/lib/apt/lists/*
