"""railnet jobs: the training-job operator (`railnet controller`).

TFJob and PyTorchJob in KubeDL's group (training.kubedl.io/v1alpha1) and Kubeflow's (kubeflow.org/v1)
are reconciled into replica pods, per-replica Services, an optional PodGroup and a status. The layout
follows the model -> decide -> act split of ``scheduler/``: ``api`` (parse + validate a job),
``envs``/``ports``/``rails``/``builder`` (pure: env, host ports, rail networks, manifests), ``admission``
(queue admission by ElasticQuota), ``store``/``workqueue``/``expectations`` (watch caches and
queueing), ``reconciler`` (API I/O) and ``controller`` (process).
See docs/jobs.md.
"""
