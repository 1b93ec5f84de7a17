# kube-nft-proxy image: built from source, run on a slim Debian base that carries the nft binary
# (the nft backend applies transactions with `nft -f -`; once the netlink backend is the default,
# the image can be distroless/static).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kube-nft-proxy

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends nftables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kube-nft-proxy /usr/local/bin/kube-nft-proxy
ENTRYPOINT ["/usr/local/bin/kube-nft-proxy"]
CMD ["run", "--config=/var/lib/kube-nft-proxy/config.conf"]
