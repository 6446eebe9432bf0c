<?php
/*
 * Installs WordPress into an empty database without a browser or network,
 * then creates the administrator's application password. Run with the
 * environment of wp-config.php; prints one JSON object.
 */

define('WP_INSTALLING', true);
$damdup_url = parse_url(trim(file_get_contents(getenv('DAMDUP_WP_SITE') . '/public-url')));
$_SERVER['HTTP_HOST'] = $damdup_url['host'] . (isset($damdup_url['port']) ? ':' . $damdup_url['port'] : '');
$_SERVER['REQUEST_URI'] = '/';
$_SERVER['SERVER_PROTOCOL'] = 'HTTP/1.1';
$_SERVER['REQUEST_METHOD'] = 'GET';
require __DIR__ . '/wp-config.php';

// wp_install() mails the administrator; nobody reads it here.
function wp_new_blog_notification($blog_title, $blog_url, $user_id, $password) {
}
require_once ABSPATH . 'wp-admin/includes/upgrade.php';

$user = getenv('DAMDUP_WP_ADMIN');
$result = wp_install('damdup test site', $user, $user . '@example.invalid', 0, '',
                     wp_generate_password(24, false));

// Pretty permalinks, so the API lives at /wp-json/ as on most sites.
global $wp_rewrite;
$wp_rewrite->set_permalink_structure('/%postname%/');
update_option('permalink_structure', '/%postname%/');
update_option('timezone_string', 'UTC');
flush_rewrite_rules(false);

list($app_password, $item) = WP_Application_Passwords::create_new_application_password(
    $result['user_id'],
    array('name' => 'damdup tests')
);
echo json_encode(array('user_id' => $result['user_id'], 'app_password' => $app_password)), "\n";
