<?php
/*
 * Router for `php -S`: the uploads are static files under the docroot (the
 * test site's folder); core's static assets come from /usr/share/wordpress;
 * everything else goes to WordPress's front controller with our wp-config.
 */

$damdup_path = rawurldecode((string) parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH));
if (str_contains($damdup_path, '..')) {
    http_response_code(400);
    return true;
}
if (str_starts_with($damdup_path, '/wp-content/uploads/')) {
    // php -S serves the file itself (with its MIME type), or 404 when missing.
    if (is_file($_SERVER['DOCUMENT_ROOT'] . $damdup_path)) {
        return false;
    }
    http_response_code(404);
    header('Content-Type: text/plain');
    echo "not found\n";
    return true;
}
if (preg_match('#^/wp-(includes|admin)/.+\.(css|js|png|gif|svg|woff2?)$#', $damdup_path)
    && is_file('/usr/share/wordpress' . $damdup_path)) {
    $types = array('css' => 'text/css', 'js' => 'application/javascript', 'png' => 'image/png',
                   'gif' => 'image/gif', 'svg' => 'image/svg+xml', 'woff' => 'font/woff',
                   'woff2' => 'font/woff2');
    header('Content-Type: ' . $types[pathinfo($damdup_path, PATHINFO_EXTENSION)]);
    readfile('/usr/share/wordpress' . $damdup_path);
    return true;
}

// As index.php + wp-blog-header.php do, minus the theme: REST requests end
// inside wp() (rest_api_loaded on parse_request).
$_SERVER['SCRIPT_NAME'] = '/index.php';
$_SERVER['PHP_SELF'] = '/index.php';
$_SERVER['SCRIPT_FILENAME'] = '/usr/share/wordpress/index.php';
define('WP_USE_THEMES', false);
require __DIR__ . '/wp-config.php';
wp();
if (!headers_sent()) {
    status_header(404);
    header('Content-Type: text/plain');
}
echo "The damdup test site serves only its REST API and uploads.\n";
