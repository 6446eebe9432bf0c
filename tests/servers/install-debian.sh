#!/bin/sh
# Installs the real servers the tests run against (WordPress on MariaDB,
# PostgreSQL for the index, Redis and RabbitMQ for the workers), and the
# browser the review page is tested in, from Debian 12's packages.
# Idempotent: a fast no-op when everything is present. Must run as root (or
# with sudo) the first time only.
set -eu

missing=""
# chromium: the headless browser the review page's tests drive (Playwright).
for package in wordpress php-cli php-mysql php-gd chromium fonts-liberation; do
    dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
done
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
    missing="$missing mariadb-server"
fi
# PostgreSQL: the index's tests on the second store (tests/servers/postgresql.py
# starts the cluster when it is down and adds the tests' user as a role).
if ! command -v pg_lsclusters >/dev/null 2>&1; then
    missing="$missing postgresql"
fi
# The brokers of `damdup worker` (engine = "celery"): tests/servers/broker.py
# starts each when it does not answer on 127.0.0.1.
if ! command -v redis-server >/dev/null 2>&1; then
    missing="$missing redis-server"
fi
if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    missing="$missing rabbitmq-server"
fi
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo "$0" "$@"
    fi
    echo "install-debian.sh: need root to install:$missing" >&2
    exit 1
fi

# The wordpress package depends on "apache2 | httpd", so apache2 comes along
# (installed, not started; enabled for the next boot as Debian does). The
# tests serve WordPress with `php -S` on 127.0.0.1: for the time of the
# install, a policy-rc.d refuses to start apache, so nothing listens on port
# 80. An existing policy (containers have one refusing everything) is kept.
policy=/usr/sbin/policy-rc.d
own_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\ncase "$1" in apache2|apache-htcacheclean) exit 101 ;; esac\nexit 0\n' >"$policy"
    chmod 755 "$policy"
    own_policy=1
fi
cleanup() { [ -n "$own_policy" ] && rm -f "$policy"; true; }
trap cleanup EXIT
trap 'exit 130' INT TERM

export DEBIAN_FRONTEND=noninteractive
echo "install-debian.sh: installing$missing" >&2
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
