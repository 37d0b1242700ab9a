"""The controller's machinery around the reconcile pass: the caches the watches fill, the work
queue and its timers, the Kubernetes client, apply and prune, the runtime image rollout budget,
the runtime pods' device reports, and the Lease that picks the one active replica."""
