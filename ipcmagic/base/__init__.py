"""What the cluster and ``%%torchrun`` share: the Slurm allocation, addresses, launch commands,
errors, how processes exit, the watchdog, and the guards of reaches into dependencies."""
