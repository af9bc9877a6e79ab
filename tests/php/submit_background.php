<?php
// The seed's client: submit background jobs with addTaskBackground; print each job's handle and
// unique, one job a line, in the order of the workloads.
// usage: php submit_background.php HOST PORT FUNCTION WORKLOAD...
[$host, $port, $function] = array_slice($argv, 1, 3);
$client = new GearmanClient();
$client->addServer($host, (int)$port);
$handles = [];
$client->setCreatedCallback(function (GearmanTask $task) use (&$handles) {
    $handles[$task->unique()] = $task->jobHandle();  // JOB_CREATED: the handle the client got
});
$uniques = [];
foreach (array_slice($argv, 4) as $i => $workload) {
    $uniques[] = $unique = "php-" . getmypid() . "-$i";
    $client->addTaskBackground($function, $workload, null, $unique);
}
if (!$client->runTasks()) {
    fwrite(STDERR, "runTasks failed: " . $client->error() . "\n");
    exit(1);
}
foreach ($uniques as $unique) {
    echo $handles[$unique], " ", $unique, "\n";
}
