<?php
/*
 * Plugin Name: damdup test site
 * Description: Keeps the test WordPress off the network, and gives media the
 * location and department fields that Helsinki's sites keep with Advanced
 * Custom Fields ("Show in REST API"): an `acf` object on each attachment,
 * read and written as ACF does (ACF itself is not packaged in Debian).
 */

// No request leaves the machine: update checks, oEmbed, pingbacks. Loopback
// addresses stay allowed: the damdup plugin notifies `damdup serve` there.
add_filter('pre_http_request', function ($preempt, $args, $url) {
    $host = strtolower((string) parse_url($url, PHP_URL_HOST));
    if (in_array($host, array('127.0.0.1', '[::1]', '::1', 'localhost'), true)) {
        return $preempt;
    }
    return new WP_Error('http_request_blocked', 'the damdup test site has no network');
}, 10, 3);

const DAMDUP_ACF_FIELDS = array('location', 'department');

add_action('rest_api_init', function () {
    register_rest_field('attachment', 'acf', array(
        'get_callback' => function ($post) {
            $values = array();
            foreach (DAMDUP_ACF_FIELDS as $name) {
                $value = get_post_meta($post['id'], $name, true);
                $values[$name] = $value === '' ? null : $value;
            }
            return $values;
        },
        'update_callback' => function ($values, $post) {
            foreach (DAMDUP_ACF_FIELDS as $name) {
                if (is_array($values) && array_key_exists($name, $values)) {
                    update_post_meta($post->ID, $name, (string) $values[$name]);
                }
            }
            return true;
        },
        'schema' => array(
            'type' => 'object',
            'context' => array('view', 'edit'),
            'properties' => array(
                'location' => array('type' => array('string', 'null')),
                'department' => array('type' => array('string', 'null')),
            ),
        ),
    ));
});
