/**
 * The job's Hugging Face tokenizer in the page: @huggingface/tokenizers over the served
 * tokenizer.json, as `encode(text, addSpecialTokens) → ids`, and the pad id.
 *
 * Only tokenizer.json is served (not tokenizer_config.json), and @huggingface/tokenizers reads a
 * WordLevel model's unknown token from the config argument, not from the model section: without it
 * unknown words come back as `undefined`. So the config is made from tokenizer.json itself, and an
 * id that is still missing is an error naming the token instead of a silent hole in the batch.
 * Its `Whitespace` pre-tokenizer splits on JavaScript's ASCII `\w` ("amélie" becomes three pieces),
 * where Hugging Face's splits on Unicode word characters (one piece): it is replaced by the same
 * rule written as a `Split` over `\w+|[^\w\s]+`, which @huggingface/tokenizers translates with
 * Oniguruma's Unicode word set, so the ids are Hugging Face's.
 */

const PAD_CANDIDATES = ["<pad>", "[PAD]", "<|pad|>", "<|im_end|>", "<|endoftext|>", "</s>", "<|end_of_text|>"]; // a pad token, else the end of sequence (as edgezo)

/** `{encode, padId}` for a parsed tokenizer.json; `Tokenizer` is @huggingface/tokenizers' class. */
export function jobTokenizer(Tokenizer, json, padId = null) {
  json = { ...json, pre_tokenizer: unicodeWhitespace(json.pre_tokenizer) };
  const special = (json.added_tokens ?? []).filter((t) => t.special).map((t) => t.content);
  const tokenizer = new Tokenizer(json, { unk_token: json.model?.unk_token ?? undefined });
  const encode = (text, addSpecial) => {
    const { ids, tokens } = tokenizer.encode(text, { add_special_tokens: addSpecial });
    const hole = ids.findIndex((id) => id === undefined || id === null);
    if (hole >= 0) throw new Error(`the tokenizer has no id for ${JSON.stringify(tokens[hole])} and no unknown token`);
    return ids;
  };
  if (padId === null) {
    const name = PAD_CANDIDATES.find((t) => special.includes(t));
    padId = name === undefined ? 0 : tokenizer.token_to_id(name);
  }
  return { encode, padId };
}

const WHITESPACE_SPLIT = { type: "Split", pattern: { Regex: "\\w+|[^\\w\\s]+" }, behavior: "Removed", invert: true };

/** A pre-tokenizer config with every `Whitespace` replaced by its Unicode-aware `Split` equivalent. */
function unicodeWhitespace(config) {
  if (!config) return config;
  if (config.type === "Whitespace") return WHITESPACE_SPLIT;
  if (config.type === "Sequence") return { ...config, pretokenizers: config.pretokenizers.map(unicodeWhitespace) };
  return config;
}
