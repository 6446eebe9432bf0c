<?php
/*
 * The test site's own wp-config, used instead of Debian's
 * /usr/share/wordpress/wp-config.php (which reads /etc/wordpress/config-<host>.php).
 * Everything per site comes from the environment that
 * tests/servers/wordpress.py gives `php -S` and the install script; nothing
 * system-wide is read or written.
 */

$damdup_site = getenv('DAMDUP_WP_SITE');
if (!$damdup_site || !is_dir($damdup_site)) {
    http_response_code(500);
    exit("DAMDUP_WP_SITE is not set to the test site's folder\n");
}

define('DB_NAME', getenv('DAMDUP_WP_DB_NAME'));
define('DB_USER', getenv('DAMDUP_WP_DB_USER'));
define('DB_PASSWORD', getenv('DAMDUP_WP_DB_PASSWORD'));
define('DB_HOST', getenv('DAMDUP_WP_DB_HOST'));
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
$table_prefix = 'wp_';

foreach (array('AUTH_KEY', 'SECURE_AUTH_KEY', 'LOGGED_IN_KEY', 'NONCE_KEY', 'AUTH_SALT',
               'SECURE_AUTH_SALT', 'LOGGED_IN_SALT', 'NONCE_SALT') as $damdup_name) {
    define($damdup_name, getenv('DAMDUP_WP_SALT') . $damdup_name);
}

// Application passwords work without HTTPS only on a 'local' site.
define('WP_ENVIRONMENT_TYPE', 'local');

// The public URL is the fault proxy's when there is one: WordPress builds
// source_url and every rendition URL from it. Read on every request, so the
// test server can change it after start-up.
$damdup_url = rtrim(trim((string) @file_get_contents($damdup_site . '/public-url')), '/');
define('WP_HOME', $damdup_url);
define('WP_SITEURL', $damdup_url);
define('WP_CONTENT_DIR', $damdup_site . '/wp-content');
define('WP_CONTENT_URL', $damdup_url . '/wp-content');
define('WPMU_PLUGIN_DIR', __DIR__ . '/mu-plugins');

// No network, no background work: cron would call wp-cron.php through the
// public URL (the fault proxy) in the middle of a test.
define('DISABLE_WP_CRON', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
define('WP_AUTO_UPDATE_CORE', false);
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('WP_DEBUG', false);

define('ABSPATH', '/usr/share/wordpress/');
require_once ABSPATH . 'wp-settings.php';
