# Dockerfile - the pdserve image: one binary for the prefill server, the
# decode server and the router (ENTRYPOINT pdserve; the subcommand and its
# flags are the container's command, see deploy/docker-compose.pd.yml).
#
#   docker build -t pdserve .
#   docker run --rm --network host -v /data/models:/models:ro pdserve \
#       server --model-path /models/model.gguf --host 0.0.0.0 --port 30000
#
# Two stages: a Debian 12 build stage with the build dependencies
# (scripts/install-deps.sh --build) runs make; the runtime stage is
# debian:12-slim with only the shared libraries pdserve links
# (scripts/install-deps.sh --runtime: libevent, json-c, libcurl, UCX with
# rdma-core's verbs providers) and curl for health checks. It runs as the
# unprivileged user pdserve (uid 10001). Models are not in the image: mount
# them at /models (read-only is enough).
#
# The build is -O2 with runtime CPU dispatch (AVX2 / AVX-512 kernels are
# picked on the host that runs the container), so one image serves any
# x86-64 machine.

FROM debian:12 AS build
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh --build && rm -rf /var/lib/apt/lists/*
COPY Makefile ./
COPY src ./src
RUN make -j"$(nproc)" build/pdserve && strip build/pdserve

FROM debian:12-slim
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh --runtime && rm /tmp/install-deps.sh \
	&& useradd --system --uid 10001 --user-group --create-home --home-dir /var/lib/pdserve \
		--shell /usr/sbin/nologin pdserve \
	&& mkdir /models
COPY --from=build /src/build/pdserve /usr/local/bin/pdserve
USER pdserve
WORKDIR /var/lib/pdserve
VOLUME /models
# server HTTP, decode HTTP, prefill bootstrap, router
EXPOSE 30000 30001 8998 8000
ENTRYPOINT ["/usr/local/bin/pdserve"]
CMD ["--help"]
