# An image with pgflow-python installed from this checkout (the build fetches the pinned
# upstream SQL with npm, so Node.js is needed at build time only).
FROM python:3.12-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.12-slim
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels
ENTRYPOINT ["pgflow"]
