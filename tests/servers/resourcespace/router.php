<?php
/*
 * Router for `php -S` in front of the real ResourceSpace: what its Apache
 * set-up does that php -S does not. Everything else is ResourceSpace's own
 * scripts and static files, served by php -S as they are.
 */

$damdup_path = rawurldecode((string) parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH));
// include/.htaccess and languages/.htaccess say "Deny from all"; the harness's
// own files (vendor/, the log of missing classes) are not served either.
if (preg_match('#^/(include|languages|vendor)(/|$)#', $damdup_path)
    || preg_match('#/\.ht|\.\.#', $damdup_path)) {
    http_response_code(403);
    header('Content-Type: text/html; charset=iso-8859-1');
    echo "<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\n<html><head>\n"
        . "<title>403 Forbidden</title>\n</head><body>\n<h1>Forbidden</h1>\n"
        . "<p>You don't have permission to access this resource.</p>\n</body></html>\n";
    return true;
}
// Apache (and PHP-FPM) always set QUERY_STRING, empty when there is none;
// php -S leaves it out, and api/index.php reads it for every call.
$_SERVER['QUERY_STRING'] = $_SERVER['QUERY_STRING'] ?? '';
return false;
