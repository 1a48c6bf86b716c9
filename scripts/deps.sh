#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages einmoe needs that are missing (uses sudo
# when not root). Nothing else is downloaded, ever.
set -euo pipefail
pkgs=(g++ make cmake libeigen3-dev libxtensor-dev catch2 libbenchmark-dev libdnnl-dev nlohmann-json3-dev libopenmpi-dev openmpi-bin clang libclang-rt-14-dev clang-format)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all present (${pkgs[*]})"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
