#!/usr/bin/env bash
# `make test` needs RabbitMQ on 127.0.0.1:5672 (guest/guest) for the queue tests. Start a local
# broker that is installed but stopped; otherwise say in one line what is missing, at once.
set -u
port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
port_open && exit 0
if command -v rabbitmq-server >/dev/null 2>&1; then
  echo "RabbitMQ is installed but not running: starting it (rabbitmq-server -detached)"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 90); do
    port_open && exit 0
    sleep 1
  done
  echo "make test: RabbitMQ did not start listening on 127.0.0.1:5672 within 90 s" >&2
  exit 1
fi
echo "make test: needs RabbitMQ on 127.0.0.1:5672 (guest/guest); install it (Debian: apt-get install rabbitmq-server) or start one there" >&2
exit 1
