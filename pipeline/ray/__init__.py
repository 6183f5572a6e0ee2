"""The Ray side of the pipeline: starting or joining a cluster, the Ray Train runner, Tune trials, stage
tasks and where each ran. The library in aae/ never imports Ray."""
