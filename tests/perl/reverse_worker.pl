#!/usr/bin/perl
# A worker written with Perl's Gearman::Worker (Debian libgearman-client-perl), which asks for
# jobs with the plain GRAB_JOB. "reverse" sends STEPS statuses and data chunks, then returns the
# reversed workload.  usage: perl reverse_worker.pl HOST:PORT [STEPS=3]
use strict;
use warnings;
use Gearman::Worker;

my ($server, $steps) = @ARGV;
$steps ||= 3;
$| = 1;
my $worker = Gearman::Worker->new(job_servers => [$server]);
$worker->register_function(reverse => sub {
    my $job = shift;
    my $workload = $job->arg;
    for my $i (1 .. $steps) {
        $job->set_status($i, $steps);
        $worker->send_work_data($job, "perl step $i of $workload");
    }
    return scalar reverse $workload;
});
$worker->work while 1;
