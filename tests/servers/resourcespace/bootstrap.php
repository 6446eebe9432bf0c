<?php
/*
 * After ResourceSpace's own installer (pages/setup.php) has made the database
 * and the super admin, this does what an administrator then does in Admin →
 * Users and Admin → Metadata fields, with ResourceSpace's own functions:
 * a user for damdup in the "Administrators" group (search, download, edit
 * live resources), and a global multi-line text field `damdup` for its marks.
 * Prints the refs and each user's API key (what their profile page shows).
 * Run with the site's folder as the first argument, by the PHP command line.
 */

$suppress_headers = true;
$root = rtrim($argv[1], '/');
chdir($root . '/include');
require $root . '/include/boot.php';
require_once $root . '/include/api_functions.php';

$users = [];
foreach (['admin' => 3, 'damdup' => 1, 'damdup-reader' => 2] as $name => $group) {
    $ref = (int) ps_value('SELECT ref value FROM user WHERE username = ?', ['s', $name], 0);
    if ($ref === 0) {
        $ref = new_user($name, $group);
        if (!is_int($ref) || $ref < 1) {
            fwrite(STDERR, "new_user($name) failed: " . var_export($ref, true) . "\n");
            exit(1);
        }
    }
    $users[$name] = ['ref' => $ref, 'key' => get_api_key($ref)];
}

$field = (int) ps_value('SELECT ref value FROM resource_type_field WHERE name = ?', ['s', 'damdup'], 0);
if ($field === 0) {
    $field = create_resource_type_field('damdup', 0, FIELD_TYPE_TEXT_BOX_MULTI_LINE, 'damdup');
}
echo json_encode(['users' => $users, 'marks_field' => $field]), "\n";
