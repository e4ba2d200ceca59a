"""finetune-operator: FineTuneJobs on Kubernetes, run by KubeRay and Ray Train."""

__version__ = "0.1.0"
