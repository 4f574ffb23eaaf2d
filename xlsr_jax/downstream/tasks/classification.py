"""Utterance classification: LID (task=lid, the language) and SID (task=sid, the speaker).

Three ways to train the head: fine-tuning with the encoder (finetune.mode=finetune), a head on
the frozen encoder trained by the step loop (mode=probe, probe.solver=sgd), or the converged
L2 logistic regression on pooled features (mode=probe, probe.solver=lbfgs:
`downstream.linear_probe`, no step loop). Scored by accuracy, balanced accuracy and macro-F1
beside the majority-class, chance and hand-made-feature (FBANK, MFCC) baselines.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax

from xlsr_jax.checkpoints import model_files
from xlsr_jax.config_loading import ConfigError
from xlsr_jax.downstream import data as data_lib
from xlsr_jax.downstream import encoders, heads, linear_probe, metrics
from xlsr_jax.downstream.task_setup import TaskError
from xlsr_jax.downstream.tasks.base import Config, Task, export_metadata


@dataclasses.dataclass(frozen=True)
class ClassificationTask(Task):
  """label_info: the class names (sorted `field` values of the training split)."""
  field: str  # the example field that is the class: "language" or "speaker"

  def check_config(self, config: Config) -> None:
    if self.fits_without_steps(config) and config.head.projection_dim:
      raise ConfigError("head.projection_dim must be 0 with probe.solver=lbfgs (a linear probe); "
                        "use --config.probe.solver=sgd for a projection")

  def build(self, config: Config, loaded, encoder_config, train_index):
    names = data_lib.class_names_from(train_index, self.field, config.task)
    loaded_parts = {"wav2vec2": loaded.params} if loaded.params else {}
    lbfgs = self.fits_without_steps(config)
    if loaded.classifier_head is not None:
      stored = int(loaded.classifier_head["classifier"]["kernel"].shape[-1])
      if stored != len(names):
        raise TaskError(f"the classifier of {loaded.path} has {stored} classes but task "
                        f"{config.task} on {config.data.corpus} has {len(names)}; "
                        f"start from an encoder without this head")
      if lbfgs:
        pass  # the L-BFGS probe is fitted afresh on the features; a stored head is not reused
      elif "feature_mean" in loaded.classifier_head:
        raise TaskError(f"{loaded.path} holds an L-BFGS probe head (standardised features), "
                        f"which the SGD head cannot continue from; use probe.solver=lbfgs or "
                        f"start from an encoder without this head")
      else:
        loaded_parts["head"] = loaded.classifier_head
    if lbfgs:  # the head that holds the fitted probe (probes.head_params)
      layers = config.probe.layers
      model = heads.Wav2Vec2ForUtteranceClassification(
          encoder_config, len(names), config.head.pooling, layers == "weighted", 0,
          freeze_encoder=True, concat_layers=layers == "concat", standardize=True)
    else:
      model = heads.Wav2Vec2ForUtteranceClassification(
          encoder_config, len(names), config.head.pooling, config.head.layer_weighting,
          config.head.projection_dim, freeze_encoder=config.finetune.mode == "probe")
    return model, loaded_parts, data_lib.ClassLabeler(self.field, names), names

  def check_data(self, config: Config, data, label_info, labeler) -> None:
    data_lib.warn_unseen(label_info, data.test_index, self.field, config.task)

  def run_line(self, config: Config) -> str:
    return f", solver={config.probe.solver}" if config.finetune.mode == "probe" else ""

  def fits_without_steps(self, config: Config) -> bool:
    return config.finetune.mode == "probe" and config.probe.solver == "lbfgs"

  def fit_without_steps(self, config, workdir, data, loaded, model, labeler, label_info):
    params = loaded.params or encoders.random_encoder(model.config, config.init_seed)
    results = linear_probe.run_probe(config, workdir, data.builder, params, model.config, model,
                                     labeler, label_info, data.test_index)
    results["init_source"] = loaded.source
    return results

  def loss(self, out, batch, config):
    weight = batch["example_valid"].astype(jnp.float32)
    n = jnp.maximum(jnp.sum(weight), 1.0)
    logits = out["logits"]
    per = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(batch["label"], 0))
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return jnp.sum(per * weight) / n, {"accuracy": jnp.sum(correct * weight) / n}

  def eval_step(self, tuner, state, batch):
    """logits [batch, classes] and the pooled last-layer embedding [batch, dim]."""
    out = tuner.forward(state.params, batch, None, deterministic=True)
    return {"logits": out["logits"], "embedding": out["pooled"][-1]}

  def score(self, outputs, index, label_info, config, eval_start):
    names = list(label_info)
    logits = np.concatenate([o["logits"] for o, _ in outputs])
    labels = np.concatenate([b["label"] for _, b in outputs])
    preds = logits.argmax(-1)
    seen_mask = labels >= 0
    results = metrics.classification_metrics(labels[seen_mask], preds[seen_mask], names)
    results["accuracy"] = float(np.mean(preds == labels))  # unseen test classes count as errors
    results["error_rate"] = 1.0 - results["accuracy"]
    confusion = np.asarray(results.pop("confusion"))
    embeddings = np.concatenate([o["embedding"] for o, _ in outputs])
    embedding_labels = list(index.languages)  # coloured by language (issue 7), for every task
    return results, dict(confusion=confusion, labels=names, embeddings=embeddings,
                         embedding_labels=embedding_labels)

  def add_results(self, results, config, data, label_info, labeler, loaded, workdir) -> None:
    """The baselines first (the same L-BFGS probe on FBANK and MFCC features, majority class,
    chance), then the run's facts."""
    ids = {name: i for i, name in enumerate(label_info)}
    train_ids = np.asarray([ids[x] for x in data.train_index.values(self.field)])
    test_ids = np.asarray([ids[x] for x in data.test_index.values(self.field) if x in ids])
    results["baselines"] = metrics.baselines(train_ids, test_ids, len(label_info))
    if config.probe.handmade_baselines:
      results["baselines"].update(linear_probe.handmade_baselines(
          config, workdir, data.builder, labeler, tuple(label_info)))
    super().add_results(results, config, data, label_info, labeler, loaded, workdir)

  def export(self, export_dir, params, model, config, label_info) -> None:
    model_files.save_model(export_dir, params, model.config,
                           export_metadata(config, class_names=list(label_info)))
