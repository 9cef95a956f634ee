#!/usr/bin/env bash
# Buys tea and coffee through the shop's front, as a browser would, with curl: the front
# page, two adds to the cart, the checkout form, the payment form, the paid order. Prints
# each step; exits non-zero at the first step that does not answer as a customer expects.
# Usage: examples/shop/buy.sh [ADDR]   (default 127.0.0.1:8080, the ingress port)
set -euo pipefail
addr=${1:-127.0.0.1:8080}
jar=$(mktemp)
trap 'rm -f "$jar"' EXIT
c() { curl -sS --max-time 10 -c "$jar" -b "$jar" "$@"; }
step() { # step WANT WHAT CURL-ARGS...: a request that must answer WANT
  local want=$1 what=$2; shift 2
  local got
  got=$(c -o /dev/null -w '%{http_code}' "$@")
  [ "$got" = "$want" ] || { echo "buy.sh: $what answered $got, not $want" >&2; exit 1; }
  echo "$what: $got"
}
field() { sed -n "s/.*name=\"$1\"[^>]*value=\"\([^\"]*\)\".*/\1/p"; }
step 200 "GET / (the products)" "http://$addr/"
step 303 "add tea to the cart" -d sku=tea "http://$addr/cart/add"
step 303 "add coffee to the cart" -d sku=coffee "http://$addr/cart/add"
id=$(c "http://$addr/checkout" | field id)
[ -n "$id" ] || { echo "buy.sh: no checkout form" >&2; exit 1; }
step 303 "check out (order $id)" -d "id=$id&name=Demo+Customer&address=1+Harbour+Street" "http://$addr/checkout"
amount=$(c "http://$addr/orders/$id/pay" | field amount)
step 303 "pay $amount EUR" -d "card=4242424242424242&amount=$amount" "http://$addr/orders/$id/pay"
c "http://$addr/orders/$id" | grep -o 'Thank you[^<]*</h1><p>[^<]*' | sed 's/<[^>]*>/ /g'
c "http://$addr/cart" | grep 'Your cart is empty' >/dev/null || { echo "buy.sh: the cart is not empty" >&2; exit 1; }
echo "the cart is empty again"
