#!/usr/bin/env bash
# Idempotent installation of everything edgesync needs on Debian 12 (as root):
# the Debian packages (Ceph, qemu-img, Mosquitto, Prometheus), a virtualenv in
# .venv with the package and its test extras, Keystone in .venv-keystone, Nova
# and Cinder in .venv-openstack, and Debian's rados/rbd bindings made
# importable from .venv and .venv-openstack. Re-running it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(ceph-mon ceph-osd ceph-common python3-rados python3-rbd qemu-utils
      qemu-block-extra mosquitto mosquitto-clients prometheus systemd)
PYTHON=${PYTHON:-python3}

missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then echo "setup: must run as root to install packages" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.edgesync-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing edgesync and its test extras into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi

# Keystone (PyPI `keystone`, for `lab up --auth keystone` and its tests) in a
# venv of its own: its pins (SQLAlchemy, oslo.*, eventlet) are not the project's.
# gunicorn serves its WSGI app.
ks_stamp=.venv-keystone/.edgesync-installed
if [ ! -f "$ks_stamp" ] || [ scripts/setup.sh -nt "$ks_stamp" ]; then
  echo "setup: installing Keystone into .venv-keystone"
  [ -x .venv-keystone/bin/python ] || "$PYTHON" -m venv .venv-keystone
  .venv-keystone/bin/pip install -q --disable-pip-version-check 'keystone>=26,<31' 'gunicorn>=23,<28'
  touch "$ks_stamp"
fi

# Nova and Cinder (PyPI, their newest releases) in one venv of their own, for
# the tests that run their RBD drivers and Glance clients against the hub
# (tests/openstack/): their pins are not the project's. They share the venv
# but not a process (each registers oslo.config options the other also does).
os_stamp=.venv-openstack/.edgesync-installed
if [ ! -f "$os_stamp" ] || [ scripts/setup.sh -nt "$os_stamp" ]; then
  echo "setup: installing Nova and Cinder into .venv-openstack"
  [ -x .venv-openstack/bin/python ] || "$PYTHON" -m venv .venv-openstack
  .venv-openstack/bin/pip install -q --disable-pip-version-check 'nova>=34,<35' 'cinder>=29,<30'
  touch "$os_stamp"
fi

# Glance (PyPI `glance`, its newest release: the source cloud `edgesync adopt --from-glance` is
# tested against) in a venv of its own for the same reason, gunicorn as its WSGI server. Its rbd
# store needs Debian's rados/rbd bindings, linked in below as for the others.
gl_stamp=.venv-glance/.edgesync-installed
if [ ! -f "$gl_stamp" ] || [ scripts/setup.sh -nt "$gl_stamp" ]; then
  echo "setup: installing Glance into .venv-glance"
  [ -x .venv-glance/bin/python ] || "$PYTHON" -m venv .venv-glance
  .venv-glance/bin/pip install -q --disable-pip-version-check 'glance==33.0.0' 'gunicorn>=23,<28'
  touch "$gl_stamp"
fi

# rados/rbd are not on PyPI: link only Debian's two extension modules into a
# directory the venv reads through a .pth file (the whole dist-packages would
# drag ~100 Debian modules into the venv, and Debian's pyOpenSSL breaks
# Nova's imports).
link_ceph_bindings() {
  local venv=$1 linkdir=$1/ceph-bindings so site
  mkdir -p "$linkdir"
  for mod in rados rbd; do
    so=$(ls /usr/lib/python3/dist-packages/${mod}.cpython-3*-x86_64-linux-gnu.so 2>/dev/null | head -1 || true)
    if [ -z "$so" ]; then echo "setup: python3-$mod bindings not found" >&2; exit 1; fi
    ln -sf "$so" "$linkdir/$(basename "$so")"
  done
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  realpath "$linkdir" > "$site/edgesync-ceph-bindings.pth"
  "$venv/bin/python" -c 'import rados, rbd' || { echo "setup: rados/rbd do not import from $venv" >&2; exit 1; }
}
link_ceph_bindings .venv
link_ceph_bindings .venv-openstack
link_ceph_bindings .venv-glance
echo "setup: ready (.venv/bin/edgesync)"
