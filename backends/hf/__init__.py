"""The Hugging Face model layer every backend (torch, int8, mlx) stands on.

* ``source``: a ``--model`` argument (hub id, folder, GGUF converted once) -> local folder and ``ModelInfo``;
* ``configs``: its transformers configuration and model class (and a meta-device model);
* ``tokenize``: the tokenizer, verbalizer tokens and right-padded batches, the same on every backend;
* ``trainable``: ``--trainable`` (full, BitFit, norm, LoRA, names) and the tensors it selects;
* ``lora``: canonical LoRA initialisation and the torch LoRA adapters;
* ``units``: the units a split model runs in and where their weights are (``UnitLayout``);
* ``arch``: one module per architecture (llama, opt, bert): its units and its torch forward;
* ``split_executor``: ``SplitExecutor``, the executor protocol written once over the backends' hooks;
* ``factory``: the split, verbalizers and trainable set a job gives an executor.

Importing this package imports nothing heavy; the submodules import torch or transformers as needed.
"""
