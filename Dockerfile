# AOS kernel image: the `aos` binary, every bundled Rust service, the skills and the
# default settings. Build: `docker build -t aos .`; run with docker-compose.yml.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
    && mkdir /out \
    && find target/release -maxdepth 1 -type f -executable -name 'aos*' -exec cp {} /out/ \;

FROM debian:bookworm-slim
# bash runs agents' commands; python3 runs the Python skill scripts and services.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       bash ca-certificates python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY skills /opt/aos/skills
COPY aoscb.json /opt/aos/aoscb.json
WORKDIR /opt/aos
ENV AOS_HOME=/var/lib/aos
EXPOSE 8420
# Inside a container the API must listen beyond loopback for the port mapping to work.
CMD ["aos", "up", "--bind", "0.0.0.0", "--allow-remote"]
