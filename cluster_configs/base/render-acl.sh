#!/bin/sh
# render-acl.sh TEMPLATE OUTPUT: turn valkey-users.acl into a loadable aclfile.
#
# WHAT IT IS
#   The init containers of both Valkey layouts run it (from ConfigMap valkey-acl, generated
#   by base/kustomization.yaml together with the template). It drops comment and blank lines
#   (an aclfile accepts none) and appends " #<sha256>" of $VALKEY_PASSWORD_<USER upper-cased,
#   '-' as '_'> to every user line except "default". It fails on a missing or REPLACE_ME
#   password and on a template that carries a password itself, and never prints a password.
#
# HOW TO USE
#   VALKEY_PASSWORD_RAYSPILL=... ... sh render-acl.sh valkey-users.acl /run/valkey/users.acl
#   tests/unit/test_cluster_configs.py and tests/integration/test_acl_shipped.py run it too.
#
# WHAT TO CHANGE
#   VALKEY_ACL_OFF_USERS="a b": users the layout does not need are rendered "off" (no password
#   needed, nobody can log in as them). The standalone layout turns "replication" off: with no
#   replicas, a user allowed to PSYNC would only be a way to dump every tenant's data.
set -eu
template=$1
output=$2
off_users=" ${VALKEY_ACL_OFF_USERS:-} "
tmp="$output.tmp"
umask 077
: > "$tmp"
users=0
while IFS= read -r line || [ -n "$line" ]; do
  case "$line" in
    ''|'#'*) continue ;;
    'user '*) ;;
    *) echo "render-acl: not a user line: $line" >&2; rm -f "$tmp"; exit 1 ;;
  esac
  name=${line#user }
  name=${name%% *}
  case " $line " in
    *' >'*|*' <'*|*' #'*|*' nopass '*)
      echo "render-acl: user $name: passwords do not belong in the template" >&2
      rm -f "$tmp"; exit 1 ;;
  esac
  if [ "$name" = default ]; then
    printf '%s\n' "$line" >> "$tmp"
    continue
  fi
  case "$off_users" in
    *" $name "*)
      # "on" -> "off": the rules stay as documented, the user just cannot authenticate.
      printf '%s\n' "$line" | sed 's/ on / off /' >> "$tmp"
      continue ;;
  esac
  var="VALKEY_PASSWORD_$(printf '%s' "$name" | tr 'a-z-' 'A-Z_')"
  eval "password=\${$var:-}"
  case "$password" in
    '') echo "render-acl: $var is not set (password of user $name)" >&2; rm -f "$tmp"; exit 1 ;;
    REPLACE_ME*) echo "render-acl: $var is still a REPLACE_ME placeholder" >&2; rm -f "$tmp"; exit 1 ;;
  esac
  hash=$(printf '%s' "$password" | sha256sum | cut -d' ' -f1)
  printf '%s #%s\n' "$line" "$hash" >> "$tmp"
  users=$((users + 1))
done < "$template"
mv "$tmp" "$output"
echo "render-acl: wrote $users users with passwords to $output"
