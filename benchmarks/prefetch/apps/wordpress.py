"""WordPress as the seed benchmarks it: Debian's `wordpress` on Apache with mod_php, and MariaDB in the same
container, its site installed at build time so that the first GET renders a real page from the database.

The entrypoint starts mariadbd and Apache side by side, as two containers of a pod would start: until the
database answers, WordPress serves "Error establishing a database connection" with a 500, so readiness (a 200
from index.php with the site's title in it) means PHP ran WordPress against a live database.
"""

from __future__ import annotations

from pathlib import Path

from .app import App
from .rootfs import run_in

TITLE = "nri-optimizer WordPress"
PACKAGES = (
    "apache2",
    "libapache2-mod-php",
    "php-mysql",
    "mariadb-server",
    "wordpress",
    "wordpress-theme-twentytwentythree",
)
PHP = "8.2"
# What apache2's postinst enables on a fresh install, plus what WordPress's permalinks and mod_php need.
APACHE_MODULES = (
    "access_compat",
    "alias",
    "auth_basic",
    "authn_core",
    "authn_file",
    "authz_core",
    "authz_host",
    "authz_user",
    "autoindex",
    "deflate",
    "dir",
    "env",
    "filter",
    "mime",
    "mpm_prefork",
    "negotiation",
    f"php{PHP}",
    "reqtimeout",
    "rewrite",
    "setenvif",
    "status",
)
APACHE_CONFS = ("charset", "localized-error-pages", "other-vhosts-access-log", "security")
# mariadb-server's postinst creates this account with adduser --system; fixed ids keep the image reproducible.
USERS = ("mysql:x:101:101:MariaDB Server:/nonexistent:/usr/sbin/nologin",)
GROUPS = ("mysql:x:101:",)
DB_PASSWORD = "nri-optimizer-bench"  # a throwaway site on loopback, made for the benchmark

_ENTRYPOINT = """#!/bin/sh
set -e
export PORT="${PORT:-8080}"
install -d -o mysql -g mysql /run/mysqld
install -d /run/apache2 /run/lock/apache2
mariadbd --user=mysql &
. /etc/apache2/envvars
exec apache2 -DFOREGROUND
"""

# Listen on loopback only: pods share the host's network here.
_PORTS_CONF = "ServerName 127.0.0.1\nListen 127.0.0.1:${PORT}\n"
_SITE = """<VirtualHost 127.0.0.1:${PORT}>
\tDocumentRoot /usr/share/wordpress
\tAlias /wp-content /var/lib/wordpress/wp-content
\t<Directory /usr/share/wordpress>
\t\tOptions FollowSymLinks
\t\tAllowOverride Limit Options FileInfo
\t\tDirectoryIndex index.php
\t\tRequire all granted
\t</Directory>
\t<Directory /var/lib/wordpress/wp-content>
\t\tOptions FollowSymLinks
\t\tRequire all granted
\t</Directory>
\tErrorLog /dev/stderr
\tCustomLog /dev/stdout combined
</VirtualHost>
"""
# The data dir is in the image (no volume here): whatever mariadbd writes at start is copied up whole, so a
# small redo log keeps that copy to a few MB instead of the default 96 MB of zeros.
_MARIADB_CNF = """[mariadbd]
skip-networking
innodb_log_file_size = 8M
"""
# Debian's wp-config.php loads /etc/wordpress/config-<host>.php, else this file.
_WP_CONFIG = f"""<?php
define('DB_NAME', 'wordpress');
define('DB_USER', 'wordpress');
define('DB_PASSWORD', '{DB_PASSWORD}');
define('DB_HOST', 'localhost');
define('WP_CONTENT_DIR', '/var/lib/wordpress/wp-content');
// The port is chosen at run time: answer on whatever address the request came to, without a redirect.
define('WP_HOME', 'http://' . $_SERVER['HTTP_HOST']);
define('WP_SITEURL', 'http://' . $_SERVER['HTTP_HOST']);
// No network: no update checks, no cron requests to itself.
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('DISABLE_WP_CRON', true);
""" + "".join(
    f"define('{key}', 'nri-optimizer {key.lower()}');\n"
    for key in (
        "AUTH_KEY",
        "SECURE_AUTH_KEY",
        "LOGGED_IN_KEY",
        "NONCE_KEY",
        "AUTH_SALT",
        "SECURE_AUTH_SALT",
        "LOGGED_IN_SALT",
        "NONCE_SALT",
    )
)
_INSTALL_PHP = f"""<?php
$_SERVER['HTTP_HOST'] = '127.0.0.1';
define('WP_INSTALLING', true);
require '/usr/share/wordpress/wp-load.php';
require ABSPATH . 'wp-admin/includes/upgrade.php';
$result = wp_install('{TITLE}', 'admin', 'admin@example.invalid', true, '', '{DB_PASSWORD}');
if (empty($result['user_id'])) {{ fwrite(STDERR, "wp_install failed\\n"); exit(1); }}
"""
# Run chrooted in the image at build time: the packages' own tools enable Apache's and PHP's modules (as their
# postinsts would), then the database is made and WordPress installed into it, and mariadbd shut down cleanly.
_BUILD_SCRIPT = f"""
a2enmod -q {" ".join(APACHE_MODULES)}
a2enconf -q {" ".join(APACHE_CONFS)}
a2ensite -q wordpress
wp-setup --sync-wp-content
install -d -o mysql -g mysql /run/mysqld
mariadb-install-db --user=mysql --skip-test-db --auth-root-authentication-method=socket > /dev/null
mariadbd --user=mysql &
for i in $(seq 300); do mariadb-admin ping > /dev/null 2>&1 && break; sleep 0.1; done
mariadb -e "CREATE DATABASE wordpress; CREATE USER wordpress@localhost IDENTIFIED BY '{DB_PASSWORD}';
  GRANT ALL ON wordpress.* TO wordpress@localhost;"
php /tmp/wp-install.php
rm /tmp/wp-install.php
mariadb-admin shutdown
wait
rm -rf /run/mysqld /var/log/apache2/*
"""


def setup(root: Path) -> None:
    _configure_php(root)
    apache = root / "etc/apache2"
    (apache / "ports.conf").write_text(_PORTS_CONF)
    (apache / "sites-available/wordpress.conf").write_text(_SITE)
    (root / "etc/mysql/my.cnf").symlink_to("mariadb.cnf")  # mariadb-common's alternative
    (root / "etc/mysql/mariadb.conf.d/99-bench.cnf").write_text(_MARIADB_CNF)
    (root / "etc/wordpress/config-default.php").write_text(_WP_CONFIG)
    (root / "tmp/wp-install.php").write_text(_INSTALL_PHP)
    run_in(root, _BUILD_SCRIPT, what="setting up WordPress and its database")
    entrypoint = root / "usr/local/bin/start-wordpress"
    entrypoint.write_text(_ENTRYPOINT)
    entrypoint.chmod(0o755)


def _configure_php(root: Path) -> None:
    """php.ini and the extensions' ini links for Apache and the CLI, as the php packages' postinsts do (ucf
    copies, then phpenmod's `NN-name.ini` links by each ini's `; priority=NN`)."""
    etc = root / f"etc/php/{PHP}"
    lib = root / f"usr/lib/php/{PHP}"
    (etc / "apache2/php.ini").write_bytes((lib / "php.ini-production").read_bytes())
    (etc / "cli/php.ini").write_bytes((lib / "php.ini-production.cli").read_bytes())
    available = etc / "mods-available"
    available.mkdir(exist_ok=True)
    for ini in sorted(root.glob(f"usr/share/php{PHP}-*/*/*.ini")):
        (available / ini.name).write_bytes(ini.read_bytes())
        priority = next(
            (line.split("=", 1)[1].strip() for line in ini.read_text().splitlines() if line.startswith("; priority=")),
            "20",
        )
        for sapi in ("apache2", "cli"):
            (etc / sapi / "conf.d" / f"{priority}-{ini.name}").symlink_to(f"/etc/php/{PHP}/mods-available/{ini.name}")


APP = App(
    name="wordpress",
    packages=PACKAGES,
    setup=setup,
    entrypoint=("/usr/local/bin/start-wordpress",),
    ready_path="/",
    ready_text=f"<title>{TITLE}</title>",
    alternatives={"/usr/bin/awk": "/usr/bin/mawk", "/usr/bin/php": f"/usr/bin/php{PHP}"},
    users=USERS,
    groups=GROUPS,
)
