<?php
// The provider the early APNs tutorials taught, as PHP developers ran it: one TLS connection with the
// client certificate, then command-0 ("simple format") notifications, no identifier, nothing read back.
// Usage: php simple_push.php HOST PORT CLIENT_PEM CA_FILE TOKENS_FILE
[$script, $host, $port, $clientPem, $caFile, $tokensFile] = $argv;

$ctx = stream_context_create(['ssl' => [
    'local_cert' => $clientPem,
    'cafile' => $caFile,
    'verify_peer' => true,
    'verify_peer_name' => true,
]]);
$fp = stream_socket_client("ssl://$host:$port", $errno, $errstr, 10, STREAM_CLIENT_CONNECT, $ctx);
if (!$fp) {
    fwrite(STDERR, "could not connect: $errno $errstr\n");
    exit(1);
}

$sent = 0;
foreach (file($tokensFile, FILE_IGNORE_NEW_LINES | FILE_SKIP_EMPTY_LINES) as $i => $deviceToken) {
    $body = ['aps' => ['alert' => "Message $i from PHP", 'sound' => 'default']];
    $payload = json_encode($body);
    $msg = chr(0) . pack('n', 32) . pack('H*', $deviceToken) . pack('n', strlen($payload)) . $payload;
    if (fwrite($fp, $msg, strlen($msg)) === strlen($msg)) {
        $sent++;
    }
}
fclose($fp);
echo "delivered $sent\n";
