#!/bin/sh
# The shop's front page: the products, from the catalog service.
printf 'Content-Type: text/html\r\n\r\n'
products=$(timeout 3 wget -q -O- http://catalog/cgi-bin/products)
echo "<html><head><title>Tug shop</title></head><body>"
echo "<h1>Tug shop</h1><p>served by front $(hostname)</p><ul>"
echo "$products" | while read -r sku price; do
  case "$sku" in catalog:*|"") continue ;; esac
  echo "<li>$sku: $price EUR <a href=\"/cgi-bin/buy?user=guest&sku=$sku\">buy</a></li>"
done
echo "</ul><p>$(echo "$products" | head -n 1)</p></body></html>"
