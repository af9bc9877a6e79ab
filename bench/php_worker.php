<?php
// One PHP pecl-gearman (C libgearman) worker process for bench/run.py.
// usage: php php_worker.php HOST PORT FUNCTION N plain|status|byhand [REDIS_PORT]
// byhand: as status, and the job writes its status, data and result to Redis itself (phpredis,
// one pipelined round trip per job: the seed's own workaround, done well).
// Drains N jobs and prints {"jobs", "seconds", "cpu_seconds"}: from the start of the first job
// to the start of the last one, on this process's own clocks (N-1 complete job cycles, no
// start-up); cpu_seconds is user + system time of this process over the same span.
[$host, $port, $function, $n, $variant] = array_slice($argv, 1, 5);
$redis = null;
if ($variant === 'byhand') {
    $redis = new Redis();
    $redis->connect('127.0.0.1', (int)$argv[6]);
}
$n = (int)$n;
$count = 0;
$first = $last = 0;
$cpuFirst = $cpuLast = 0.0;

function cpu_seconds(): float
{
    $u = getrusage();
    return $u['ru_utime.tv_sec'] + $u['ru_utime.tv_usec'] / 1e6
        + $u['ru_stime.tv_sec'] + $u['ru_stime.tv_usec'] / 1e6;
}

$worker = new GearmanWorker();
$worker->addServer($host, (int)$port);
$worker->setTimeout(30000);  // ms: a short queue ends the run instead of hanging
$worker->addFunction($function, function (GearmanJob $job) use (
    &$count, &$first, &$last, &$cpuFirst, &$cpuLast, $n, $variant, $redis
) {
    $count++;
    if ($count === 1) {
        $first = hrtime(true);
        $cpuFirst = cpu_seconds();
    }
    if ($count === $n) {
        $last = hrtime(true);
        $cpuLast = cpu_seconds();
    }
    if ($variant === 'status' || $variant === 'byhand') {
        $job->sendStatus(1, 2);
        $job->sendData('half way');
    }
    $result = strrev($job->workload());
    if ($redis !== null) {
        $key = 'byhand:' . $job->handle();
        $redis->multi(Redis::PIPELINE)
            ->hMSet($key, ['status' => '1/2', 'result' => $result, 'unique' => $job->unique()])
            ->rPush($key . ':data', 'half way')
            ->expire($key, 86400)
            ->expire($key . ':data', 86400)
            ->exec();
    }
    return $result;
});

while ($count < $n) {
    if (!$worker->work()) {
        fwrite(STDERR, "work() failed: " . $worker->returnCode() . " " . $worker->error() . "\n");
        exit(1);
    }
}
$seconds = ($last - $first) / 1e9;
echo json_encode(['jobs' => $count, 'seconds' => $seconds, 'cpu_seconds' => $cpuLast - $cpuFirst]), "\n";
