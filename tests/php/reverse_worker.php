<?php
// The seed's worker, on today's pecl gearman API: "reverse" reverses the workload and, on the
// way, reports its progress in STEPS steps (a status and a data chunk each, TICK seconds apart).
// usage: php reverse_worker.php HOST PORT [TICK=1] [STEPS=10]
// Each chunk names the step, the workload and this process, so a test can tell attempts apart.
[$host, $port] = array_slice($argv, 1, 2);
$tick = (float)($argv[3] ?? 1);
$steps = (int)($argv[4] ?? 10);

$worker = new GearmanWorker();
$worker->addServer($host, (int)$port);
$worker->addFunction("reverse", function (GearmanJob $job) use ($tick, $steps) {
    $workload = $job->workload();
    fwrite(STDERR, "job " . $job->handle() . " workload $workload\n");
    for ($i = 1; $i <= $steps; $i++) {
        $job->sendStatus($i, $steps);
        $job->sendData("step $i of $workload by " . getmypid());
        usleep((int)($tick * 1e6));
    }
    return strrev($workload);
});

while (true) {
    $worker->work();
    $code = $worker->returnCode();
    if ($code != GEARMAN_SUCCESS) {
        fwrite(STDERR, "work() returned $code: " . $worker->error() . "\n");
        usleep(100000);  // the job server went away: libgearman reconnects on the next work()
    }
}
