"""The application builder: ``build_app(ServeArgs)`` binds the ingress (``EmotionAPI``) to
the model deployment (``EmotionRecognizer``) with the Serve options that
``recognizer_options`` and ``ingress_options`` derive from the settings.

``serve run emotion.pipelines.serving:build_app`` (re-exported by the package) calls it.
"""

# No ``from __future__ import annotations`` here: Serve reads the builder's parameter
# annotation at run time to turn ``args`` into ``ServeArgs``, which a string defeats.

from ray.serve import Application

from emotion.devices import cuda_available
from emotion.pipelines.ray_env import gpus_available
from emotion.pipelines.serving.deployment import EmotionRecognizer
from emotion.pipelines.serving.ingress import EmotionAPI
from emotion.pipelines.serving.settings import AppSettings, IngressOptions, RecognizerOptions, ServeArgs, resolve_config
from emotion.settings import PredictorConfig, parse_settings


def recognizer_options(options: RecognizerOptions, access_log: bool = True) -> dict:
    actor = {"num_cpus": options.num_cpus}
    num_gpus = _resolve_num_gpus(options)
    if num_gpus > 0:
        actor["num_gpus"] = num_gpus
    scaling = ({"autoscaling_config": options.autoscaling_config} if options.autoscaling_config
               else {"num_replicas": options.num_replicas})
    return {
        **scaling,
        "max_ongoing_requests": options.max_ongoing_requests,
        "max_queued_requests": options.max_queued_requests,
        "ray_actor_options": actor,
        "logging_config": {"enable_access_log": access_log},
        "user_config": {"max_batch_size": options.max_batch_size,
                        "batch_wait_timeout_s": options.batch_wait_timeout_s},
    }


def ingress_options(options: IngressOptions, access_log: bool = True) -> dict:
    scaling = ({"autoscaling_config": options.autoscaling_config} if options.autoscaling_config
               else {"num_replicas": options.num_replicas})
    return {**scaling, "max_ongoing_requests": options.max_ongoing_requests,
            "ray_actor_options": {"num_cpus": options.num_cpus}, "logging_config": {"enable_access_log": access_log}}


def _resolve_num_gpus(options: RecognizerOptions) -> float:
    if options.num_gpus != "auto":
        return float(options.num_gpus)
    import ray

    if ray.is_initialized():
        has_gpu = gpus_available()
    else:
        # `serve run` calls the builder before it connects to Ray; it runs on the head node.
        has_gpu = cuda_available()
    return options.gpu_fraction if has_gpu else 0.0


def build_app(args: ServeArgs) -> Application:
    """Typed Serve application builder: the ingress bound to the recognizer."""
    return bind_app(parse_settings(AppSettings, resolve_config(args)))


def bind_app(app: AppSettings) -> Application:
    """The application of settings already parsed (the serve job's, or ``build_app``'s)."""
    settings = app.serve
    predictor_config = PredictorConfig(detector=app.detector, model=app.model, predictor=app.predictor)
    limits = settings.limits
    options = recognizer_options(settings.recognizer, settings.access_log)
    recognizer = EmotionRecognizer.options(**options).bind(
        predictor_config, limits, settings.recognizer.torch_threads, options["user_config"])
    return EmotionAPI.options(**ingress_options(settings.ingress, settings.access_log)).bind(
        recognizer, limits, settings.resolved_token(), settings.readiness_timeout_s, settings.retry_after_s)
