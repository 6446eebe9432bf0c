<?php
/*
 * vendor/autoload.php for damdup's tests, in place of the one Composer writes.
 *
 * ResourceSpace's composer.json requires packages (PHPMailer, tus-php,
 * html2pdf, the Google API client, vimeo, captioning, axiell/imu-api-php and
 * what they pull in) from a registry the test machines cannot reach, and
 * include/boot.php requires this file on every request. Its own classes need
 * no autoloader: boot.php includes include/CommandPlaceholderArg.php itself,
 * and composer.json maps its own namespace for development tools only
 * (autoload-dev, Rector rules). So this autoloader loads nothing: it writes
 * down every class that ResourceSpace asks for and Composer would have
 * supplied, one line each (the class and the script that asked), so that the
 * tests can show that the paths damdup uses never reach a missing package.
 * PHP then fails as it would with the package missing.
 */

spl_autoload_register(static function (string $class): void {
    $caller = '';
    foreach (debug_backtrace(DEBUG_BACKTRACE_IGNORE_ARGS) as $frame) {
        if (isset($frame['file']) && $frame['file'] !== __FILE__) {
            $caller = $frame['file'] . ':' . ($frame['line'] ?? 0);
            break;
        }
    }
    $script = $_SERVER['REQUEST_URI'] ?? ($_SERVER['SCRIPT_NAME'] ?? '');
    file_put_contents(
        __DIR__ . '/missing-classes.log',
        json_encode(['class' => $class, 'caller' => $caller, 'request' => $script]) . "\n",
        FILE_APPEND | LOCK_EX
    );
});
