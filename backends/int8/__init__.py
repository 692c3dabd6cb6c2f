"""int8 executor: llama.cpp-style quantized weights (Q8_0, Q4_0, Q4_1), dequantized per layer on the
fly, with the trainable parameters (LoRA, BitFit/norm, or named layers) in float32.

Modules: ``quant`` (block formats), ``modules`` (QuantLinear, QuantEmbedding, QuantLoRALinear),
``gguf_file`` (GGUF tensor table), ``sources`` (weights from a safetensors folder or a GGUF),
``model`` (the quantized Hugging Face model), ``executor`` (Int8Executor), ``factory``
(``build_int8_executor``).

The model is a transformers torch model, so the executor is the torch executor's (its forward
machinery and perturbation kernels); where the weights are, which tensors train, LoRA and the
architectures' units come from the shared model layer (``edgezo.backends.hf``), as on every backend.
"""
