"""The launchers (``run_*.sh``, ``slurm_*.sbatch``) and the Python tools they use: the
hostfile check, a simulated cluster of network namespaces, and the cloud template."""
