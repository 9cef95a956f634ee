#!/usr/bin/env bash
# Builds the shop's images from busybox-static (Debian's package) and the CGI scripts under
# examples/shop/, as real OCI images:
#   OUT/oci/shop-<service>/        an OCI image layout (import it into the image store)
#   OUT/dir/shop_<service>/1/      the same image unpacked: rootfs/ and config.json (the
#                                  agent's directory image source)
# Usage: examples/build-images.sh [OUT]   (default: examples/build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/build}
busybox=$(command -v busybox || true)
if [ -z "$busybox" ] || ! file -L "$busybox" 2>/dev/null | grep -q 'statically linked'; then
  [ -x /bin/busybox ] && busybox=/bin/busybox
fi
[ -n "$busybox" ] || { echo "build-images.sh: needs busybox-static (apt-get install busybox-static)" >&2; exit 1; }
rm -rf "$out/dir" "$out/oci" "$out/tmp"
mkdir -p "$out/dir" "$out/oci" "$out/tmp"

sha() { sha256sum "$1" | cut -d' ' -f1; }

for svc in front catalog cart orders payments; do
  root="$out/dir/shop_$svc/1/rootfs"
  mkdir -p "$root"/{bin,etc,www,data,tmp,proc,sys,dev}
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  for applet in sh httpd wget cat echo date mkdir hostname sleep ls grep sed wc env tr cut \
                printf head tail rm id kill ps timeout; do
    ln -s busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/www:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\nwww:x:33:\n' > "$root/etc/group"
  printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
  cp -r "$here/shop/$svc/." "$root/www/"
  echo ok > "$root/www/healthz"
  chmod -R a+rX "$root/www"
  cat > "$out/dir/shop_$svc/1/config.json" <<JSON
{"entrypoint": ["/bin/httpd", "-f", "-v", "-p", "80", "-h", "/www"], "cmd": [],
 "env": ["PATH=/bin", "SHOP_SERVICE=$svc"], "working_dir": "/www"}
JSON

  # The OCI image layout: one gzip layer, the image config, a manifest, the index.
  oci="$out/oci/shop-$svc"
  mkdir -p "$oci/blobs/sha256"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$out/tmp/layer.tar" .
  diff_id=$(sha "$out/tmp/layer.tar")
  gzip -n -9 -c "$out/tmp/layer.tar" > "$out/tmp/layer.tar.gz"
  layer=$(sha "$out/tmp/layer.tar.gz"); layer_size=$(stat -c %s "$out/tmp/layer.tar.gz")
  mv "$out/tmp/layer.tar.gz" "$oci/blobs/sha256/$layer"
  cat > "$out/tmp/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/httpd","-f","-v","-p","80","-h","/www"],"Env":["PATH=/bin","SHOP_SERVICE=$svc"],"WorkingDir":"/www","ExposedPorts":{"80/tcp":{}},"Labels":{"org.opencontainers.image.title":"shop-$svc"}},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]},"history":[{"created_by":"examples/build-images.sh"}]}
JSON
  config=$(sha "$out/tmp/config.json"); config_size=$(stat -c %s "$out/tmp/config.json")
  mv "$out/tmp/config.json" "$oci/blobs/sha256/$config"
  cat > "$out/tmp/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer","size":$layer_size}]}
JSON
  manifest=$(sha "$out/tmp/manifest.json"); manifest_size=$(stat -c %s "$out/tmp/manifest.json")
  mv "$out/tmp/manifest.json" "$oci/blobs/sha256/$manifest"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$oci/oci-layout"
  cat > "$oci/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$manifest_size,"annotations":{"org.opencontainers.image.ref.name":"shop/$svc:1"}}]}
JSON
  echo "built shop/$svc:1"
done
rm -rf "$out/tmp"
