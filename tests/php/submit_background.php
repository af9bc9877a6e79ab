<?php
// The seed's client: submit background jobs with addTaskBackground and print each job handle.
// usage: php submit_background.php HOST PORT FUNCTION WORKLOAD...
[$host, $port, $function] = array_slice($argv, 1, 3);
$client = new GearmanClient();
$client->addServer($host, (int)$port);
$client->setOptions(GEARMAN_CLIENT_FREE_TASKS, 0);
$tasks = [];
foreach (array_slice($argv, 4) as $workload) {
    $tasks[] = $client->addTaskBackground($function, $workload);
}
if (!$client->runTasks()) {
    fwrite(STDERR, "runTasks failed: " . $client->error() . "\n");
    exit(1);
}
foreach ($tasks as $task) {
    echo $task->jobHandle(), "\n";
}
