# The runner's image (ghcr.io/rollout-lab/runner): what in-cluster load workers run (`runner worker`), and the runner
# itself. Build from the repository root: docker build -t ghcr.io/rollout-lab/runner:dev .
FROM golang:1.26.8-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X github.com/rollout-lab/rollout-lab/runner/cli.Version=dev" -o /out/runner ./runner

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/runner /runner
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/runner"]
