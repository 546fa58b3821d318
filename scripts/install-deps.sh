#!/usr/bin/env bash
# Installs every Debian package alem needs to build, test and run, on a fresh Debian 12 machine.
# Safe to run again: apt-get skips what is present. Needs root (or sudo).
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# Package postinst scripts try to start munge/slurm daemons; a policy-rc.d that exits 101 stops that.
added_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  added_policy=1
fi

$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config git ca-certificates python3 python3-pip python3-venv \
  openmpi-bin libopenmpi-dev libpmix-dev \
  libhdf5-openmpi-dev hdf5-tools \
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc \
  libsodium-dev libssl-dev libseccomp-dev \
  nlohmann-json3-dev libcpp-httplib-dev libspdlog-dev libcli11-dev libtomlplusplus-dev \
  prometheus-cpp-dev libpcre2-dev \
  libgtest-dev libgmock-dev clang-format ccache \
  slurm-wlm slurm-wlm-basic-plugins munge curl procps \
  libboost-dev prometheus clang libclang-rt-14-dev tcpdump iptables iproute2

if [ "$added_policy" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
echo "install-deps: done"
