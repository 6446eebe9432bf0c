<?php
/**
 * Plugin Name:       damdup
 * Description:       Keeps the marks of damdup (the City of Helsinki's duplicate-image finder) on media-library attachments: which images are canonical, duplicates or related, their cluster, and the canonical image's link. damdup writes them through this plugin's REST route; editors see them in the media library's list view.
 * Version:           0.1.0
 * Requires at least: 5.7
 * Requires PHP:      7.4
 * Author:            City of Helsinki
 * License:           MIT
 * Text Domain:       damdup
 *
 * Install: copy this folder to wp-content/plugins/damdup and activate
 * "damdup" under Plugins. The marks need no configuration.
 *
 * Notifications (optional): when an image is uploaded or its attachment
 * edited, the plugin tells `damdup serve` so that damdup checks it at once.
 * Set the hook's address and the unit's shared secret (the value of
 * DAMDUP_<UNIT>_WEBHOOK_SECRET where damdup runs), as options:
 *
 *   wp option update damdup_webhook_url 'https://damdup.example/hooks/<unit>'
 *   wp option update damdup_webhook_secret '<secret>'
 *
 * or as constants in wp-config.php, which win over the options:
 *
 *   define('DAMDUP_WEBHOOK_URL', 'https://damdup.example/hooks/<unit>');
 *   define('DAMDUP_WEBHOOK_SECRET', '<secret>');
 *
 * Without both, nothing is sent. The notification is sent when the request
 * that saved the image ends (its renditions are made by then), signed as
 * docs/webhooks.md describes; damdup answers 202 at once and checks later.
 * A damdup that is down or refuses never fails the upload: the plugin logs
 * it with error_log() and carries on.
 *
 * What it stores, as post meta of attachments (one string each, registered
 * with register_post_meta so the REST API shows them in `meta` of
 * /wp/v2/media/<id>?context=edit, to users who may edit the attachment):
 *
 *   damdup_marks      space-separated labels: canonical, duplicate,
 *                     duplicate-candidate, related, metadata-missing
 *   damdup_cluster    the cluster id, "dd" + 10 hexadecimal digits
 *   damdup_canonical  where the canonical image is, exactly as damdup sent it:
 *                     its URL, or, for an image with no web address (a file
 *                     on a share), its unit and path in words
 *                     ("unit arkisto: kuvat/a.jpg")
 *
 * damdup reads and replaces them with GET and PUT on
 * /wp-json/damdup/v1/marks/<attachment id>. That route writes post meta only:
 * unlike POST /wp/v2/media/<id> (wp_update_post) it leaves the attachment's
 * modification time alone, so marking an image is not an edit of it, and
 * no other field of the attachment is touched. It never deletes anything but
 * damdup's own meta rows, and it has no DELETE method.
 *
 * Each feature is one class below, hooked in at the end of this file.
 */

if (!defined('ABSPATH')) {
    exit; // Loaded by WordPress only.
}

define('DAMDUP_PLUGIN_VERSION', '0.1.0');

/**
 * damdup's marks on attachments: the registered meta, the REST route damdup
 * writes through, and a column in the media library's list view.
 */
final class Damdup_Marks
{
    const REST_NAMESPACE = 'damdup/v1';
    const REST_ROUTE = '/marks/(?P<id>\d+)';

    /** Every label damdup writes (adapters/base.py MARK_LABELS). */
    const LABELS = array('canonical', 'duplicate', 'duplicate-candidate', 'related', 'metadata-missing');
    const CLUSTER_PATTERN = '/^dd[0-9a-f]{10}$/';
    /** A scheme, then anything printable: a URL on any platform damdup reads. */
    const URL_PATTERN = '/^[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x1f\x7f]+$/u';
    // An image with no web address is named in words: damdup's "unit U: path".
    const WORDS_PATTERN = '/^unit [^\x00-\x1f\x7f]+$/u';
    const MAX_URL_LENGTH = 8192;

    const META_MARKS = 'damdup_marks';
    const META_CLUSTER = 'damdup_cluster';
    const META_CANONICAL = 'damdup_canonical';

    public static function hook()
    {
        add_action('init', array(__CLASS__, 'register_meta'));
        add_action('rest_api_init', array(__CLASS__, 'register_routes'));
        add_filter('manage_media_columns', array(__CLASS__, 'add_column'));
        add_action('manage_media_custom_column', array(__CLASS__, 'print_column'), 10, 2);
    }

    /** The three meta keys and how each value is checked and cleaned. */
    private static function fields()
    {
        return array(
            self::META_MARKS => array(
                'description' => __('damdup marks: space-separated labels (canonical, duplicate, duplicate-candidate, related, metadata-missing).', 'damdup'),
                'validate' => array(__CLASS__, 'validate_marks'),
                'sanitize' => array(__CLASS__, 'sanitize_marks'),
            ),
            self::META_CLUSTER => array(
                'description' => __('damdup cluster id: "dd" and 10 hexadecimal digits.', 'damdup'),
                'validate' => array(__CLASS__, 'validate_cluster'),
                'sanitize' => array(__CLASS__, 'sanitize_cluster'),
            ),
            self::META_CANONICAL => array(
                'description' => __("Where the cluster's canonical image is, as damdup sent it: its URL, or its unit and path in words.", 'damdup'),
                'validate' => array(__CLASS__, 'validate_canonical'),
                'sanitize' => array(__CLASS__, 'sanitize_canonical'),
            ),
        );
    }

    // -- meta -----------------------------------------------------------------

    public static function register_meta()
    {
        foreach (self::fields() as $key => $field) {
            register_post_meta('attachment', $key, array(
                'type' => 'string',
                'single' => true,
                'default' => '',
                'description' => $field['description'],
                // Also applied to update_post_meta() by anyone, so that only
                // values damdup can read back are ever stored.
                'sanitize_callback' => $field['sanitize'],
                'auth_callback' => array(__CLASS__, 'may_edit_meta'),
                // Editorial information: shown to those who may edit the
                // attachment (context=edit), not to anonymous visitors.
                'show_in_rest' => array(
                    'schema' => array('type' => 'string', 'context' => array('edit')),
                ),
            ));
        }
    }

    /** auth_post_meta_<key>_for_attachment: the same rule as the REST route. */
    public static function may_edit_meta($allowed, $meta_key, $post_id, $user_id)
    {
        return user_can($user_id, 'upload_files') && user_can($user_id, 'edit_post', $post_id);
    }

    public static function validate_marks($value)
    {
        if (!is_string($value)) {
            return new WP_Error('damdup_invalid_marks', __('damdup_marks must be a string.', 'damdup'));
        }
        $unknown = array_diff(self::split_labels($value), self::LABELS);
        if ($unknown) {
            return new WP_Error(
                'damdup_invalid_marks',
                /* translators: 1: the unknown labels, 2: the known ones. */
                sprintf(__('Unknown damdup marks: %1$s (known: %2$s).', 'damdup'),
                        implode(', ', $unknown), implode(', ', self::LABELS))
            );
        }
        return true;
    }

    public static function validate_cluster($value)
    {
        if (!is_string($value) || ($value !== '' && !preg_match(self::CLUSTER_PATTERN, $value))) {
            return new WP_Error('damdup_invalid_cluster',
                __('damdup_cluster must be "dd" and 10 hexadecimal digits, or empty.', 'damdup'));
        }
        return true;
    }

    public static function validate_canonical($value)
    {
        if (!is_string($value) || ($value !== '' && !self::is_link($value))) {
            return new WP_Error('damdup_invalid_canonical', sprintf(
                /* translators: %d: the maximum length. */
                __('damdup_canonical must be a URL (a scheme, then no control characters) or "unit NAME: PATH", at most %d bytes, or empty.', 'damdup'),
                self::MAX_URL_LENGTH
            ));
        }
        return true;
    }

    /** Known labels only, each once, in byte order (as damdup sorts them). */
    public static function sanitize_marks($value)
    {
        $labels = array_values(array_unique(array_intersect(self::split_labels((string) $value), self::LABELS)));
        sort($labels, SORT_STRING);
        return implode(' ', $labels);
    }

    public static function sanitize_cluster($value)
    {
        $value = (string) $value;
        return preg_match(self::CLUSTER_PATTERN, $value) ? $value : '';
    }

    /**
     * The link unchanged when it is one (a URL, or a unit and path in
     * words), else nothing. Deliberately not
     * esc_url_raw() or sanitize_text_field(): they rewrite spaces, percent
     * escapes and letters outside ASCII, and damdup must read back exactly
     * the link it wrote. It is escaped where it is printed.
     */
    public static function sanitize_canonical($value)
    {
        $value = (string) $value;
        return self::is_link($value) ? $value : '';
    }

    private static function split_labels($value)
    {
        return preg_split('/\s+/', trim($value), -1, PREG_SPLIT_NO_EMPTY);
    }

    private static function is_url($value)
    {
        return strlen($value) <= self::MAX_URL_LENGTH
            && wp_check_invalid_utf8($value) === $value
            && preg_match(self::URL_PATTERN, $value) === 1;
    }

    /** A URL, or an image with no web address named in words. */
    private static function is_link($value)
    {
        return self::is_url($value)
            || (strlen($value) <= self::MAX_URL_LENGTH
                && wp_check_invalid_utf8($value) === $value
                && preg_match(self::WORDS_PATTERN, $value) === 1);
    }

    /** The stored marks, '' for each one absent. */
    public static function read($post_id)
    {
        $marks = array();
        foreach (array_keys(self::fields()) as $key) {
            $marks[$key] = (string) get_post_meta($post_id, $key, true);
        }
        return $marks;
    }

    /**
     * Make the stored marks exactly $marks (already validated): a value is
     * written with update_post_meta(), an empty one removes damdup's row.
     * Post meta only: the attachment's post row, and so its modification
     * time, stays as it was.
     */
    public static function write($post_id, array $marks)
    {
        foreach (array_keys(self::fields()) as $key) {
            $value = isset($marks[$key]) ? (string) $marks[$key] : '';
            if ($value === '') {
                delete_post_meta($post_id, $key);
            } elseif ((string) get_post_meta($post_id, $key, true) !== $value) {
                // update_post_meta() unslashes what it is given.
                update_post_meta($post_id, $key, wp_slash($value));
            }
        }
    }

    // -- REST route -----------------------------------------------------------

    public static function register_routes()
    {
        $args = array();
        foreach (self::fields() as $key => $field) {
            $args[$key] = array(
                'description' => $field['description'],
                'type' => 'string',
                'default' => '',
                'validate_callback' => function ($value) use ($field) {
                    return call_user_func($field['validate'], $value);
                },
            );
        }
        register_rest_route(self::REST_NAMESPACE, self::REST_ROUTE, array(
            'args' => array(
                'id' => array(
                    'description' => __('The attachment id.', 'damdup'),
                    'type' => 'integer',
                ),
            ),
            array(
                'methods' => WP_REST_Server::READABLE,
                'callback' => array(__CLASS__, 'rest_get'),
                'permission_callback' => array(__CLASS__, 'rest_permission'),
            ),
            array(
                // PUT only: the whole set of marks is replaced, so sending it
                // again is harmless (damdup retries after a 5xx).
                'methods' => 'PUT',
                'callback' => array(__CLASS__, 'rest_put'),
                'permission_callback' => array(__CLASS__, 'rest_permission'),
                'args' => $args,
            ),
            'schema' => array(__CLASS__, 'rest_schema'),
        ));
    }

    /**
     * Those who may upload media and edit this attachment. Asked before the
     * attachment is looked up, so that nobody else learns which ids exist.
     */
    public static function rest_permission(WP_REST_Request $request)
    {
        if (!current_user_can('upload_files')) {
            return self::forbidden();
        }
        $post = self::attachment($request['id']);
        if (is_wp_error($post)) {
            return $post;
        }
        return current_user_can('edit_post', $post->ID) ? true : self::forbidden();
    }

    public static function rest_get(WP_REST_Request $request)
    {
        return self::response((int) $request['id']);
    }

    public static function rest_put(WP_REST_Request $request)
    {
        $post_id = (int) $request['id'];
        $marks = array();
        foreach (array_keys(self::fields()) as $key) {
            $marks[$key] = (string) $request[$key];
        }
        $marks[self::META_MARKS] = self::sanitize_marks($marks[self::META_MARKS]);
        self::write($post_id, $marks);
        return self::response($post_id);
    }

    public static function rest_schema()
    {
        $properties = array(
            'id' => array('description' => __('The attachment id.', 'damdup'), 'type' => 'integer'),
        );
        foreach (self::fields() as $key => $field) {
            $properties[$key] = array('description' => $field['description'], 'type' => 'string');
        }
        return array(
            '$schema' => 'http://json-schema.org/draft-04/schema#',
            'title' => 'damdup-marks',
            'type' => 'object',
            'properties' => $properties,
        );
    }

    private static function response($post_id)
    {
        return rest_ensure_response(array_merge(array('id' => $post_id), self::read($post_id)));
    }

    private static function attachment($id)
    {
        $post = get_post((int) $id);
        if (!$post || $post->post_type !== 'attachment') {
            return new WP_Error('rest_post_invalid_id', __('Invalid attachment ID.', 'damdup'),
                                array('status' => 404));
        }
        return $post;
    }

    private static function forbidden()
    {
        return new WP_Error(
            'rest_forbidden',
            __('Sorry, you are not allowed to manage damdup marks on this attachment: that needs the upload_files capability and the right to edit it.', 'damdup'),
            array('status' => rest_authorization_required_code())
        );
    }

    // -- media library ----------------------------------------------------------

    public static function add_column($columns)
    {
        $columns['damdup'] = esc_html__('damdup', 'damdup');
        return $columns;
    }

    public static function print_column($column, $post_id)
    {
        if ($column !== 'damdup') {
            return;
        }
        $marks = self::read($post_id);
        if ($marks[self::META_MARKS] !== '') {
            echo esc_html($marks[self::META_MARKS]);
        }
        if ($marks[self::META_CLUSTER] !== '') {
            echo '<br><code>' . esc_html($marks[self::META_CLUSTER]) . '</code>';
        }
        $canonical = $marks[self::META_CANONICAL];
        $link = self::is_url($canonical) ? esc_url($canonical) : '';
        if ($link !== '') {
            echo '<br><a href="' . $link . '">' . esc_html__('canonical image', 'damdup') . '</a>';
        } elseif ($canonical !== '') {
            /* translators: %s: the canonical image's unit and path, in words. */
            echo '<br>' . esc_html(sprintf(__('canonical image: %s', 'damdup'), $canonical));
        }
    }
}

/**
 * Signed notifications to damdup when an image attachment is added or edited.
 */
final class Damdup_Notify
{
    const OPTION_URL = 'damdup_webhook_url';
    const OPTION_SECRET = 'damdup_webhook_secret';
    /** Seconds: damdup answers 202 before it checks anything. */
    const TIMEOUT = 3;

    /** attachment id => 'created' or 'updated', sent at the end of the request. */
    private static $pending = array();
    private static $hooked_shutdown = false;

    public static function hook()
    {
        add_action('add_attachment', array(__CLASS__, 'created'));
        add_action('attachment_updated', array(__CLASS__, 'updated'));
        add_action('edit_attachment', array(__CLASS__, 'updated'));
    }

    public static function created($post_id)
    {
        self::queue((int) $post_id, 'created');
    }

    public static function updated($post_id)
    {
        self::queue((int) $post_id, 'updated');
    }

    /** The hook's URL and secret: wp-config constants win over the options. */
    public static function target()
    {
        $url = defined('DAMDUP_WEBHOOK_URL') ? DAMDUP_WEBHOOK_URL : get_option(self::OPTION_URL, '');
        $secret = defined('DAMDUP_WEBHOOK_SECRET') ? DAMDUP_WEBHOOK_SECRET : get_option(self::OPTION_SECRET, '');
        if (!is_string($url) || !is_string($secret) || $url === '' || $secret === '') {
            return null;
        }
        return array($url, $secret);
    }

    /**
     * One notification per attachment and request ('created' wins): an upload
     * through the REST API fires add_attachment, and an edit fires both
     * attachment_updated and edit_attachment.
     */
    private static function queue($post_id, $event)
    {
        if ($post_id <= 0 || self::target() === null) {
            return;
        }
        if (!isset(self::$pending[$post_id]) || $event === 'created') {
            self::$pending[$post_id] = $event;
        }
        if (!self::$hooked_shutdown) {
            self::$hooked_shutdown = true;
            // When the request ends: the image's renditions exist by then.
            add_action('shutdown', array(__CLASS__, 'send_pending'));
        }
    }

    public static function send_pending()
    {
        $pending = self::$pending;
        self::$pending = array();
        if (!$pending) {
            return;
        }
        if (function_exists('fastcgi_finish_request')) {
            fastcgi_finish_request(); // the uploader has the answer already
        }
        foreach ($pending as $post_id => $event) {
            if (get_post_type($post_id) === 'attachment' && wp_attachment_is_image($post_id)) {
                self::send($post_id, $event);
            }
        }
    }

    /** "sha256=" and the HMAC-SHA256 of "<timestamp>.<body>" (docs/webhooks.md). */
    public static function signature($secret, $timestamp, $body)
    {
        return 'sha256=' . hash_hmac('sha256', $timestamp . '.' . $body, $secret);
    }

    private static function send($post_id, $event)
    {
        $target = self::target();
        if ($target === null) {
            return;
        }
        list($url, $secret) = $target;
        $body = wp_json_encode(array('asset_id' => (string) $post_id, 'event' => $event));
        $timestamp = (string) time();
        $response = wp_remote_post($url, array(
            'timeout' => self::TIMEOUT,
            'redirection' => 0,
            'headers' => array(
                'Content-Type' => 'application/json',
                'X-Damdup-Timestamp' => $timestamp,
                'X-Damdup-Signature' => self::signature($secret, $timestamp, $body),
            ),
            'body' => $body,
        ));
        if (is_wp_error($response)) {
            error_log(sprintf('damdup: notification of attachment %d not sent: %s',
                              $post_id, $response->get_error_message()));
            return;
        }
        $status = (int) wp_remote_retrieve_response_code($response);
        if ($status !== 202) {
            error_log(sprintf('damdup: notification of attachment %d refused with HTTP %d: %s',
                              $post_id, $status, substr(wp_remote_retrieve_body($response), 0, 300)));
        }
    }
}

Damdup_Marks::hook();
Damdup_Notify::hook();
