/* commands.h - the subcommands of the `danlu` binary. Each returns the process exit code
 * (0 success, 1 user error with a message already printed to stderr, 2 usage error). */
#ifndef DANLU_COMMANDS_H
#define DANLU_COMMANDS_H

#include "cli/opts.h"

#include <stdio.h>

/* danlu inspect FILE...: tensors (name, dtype, shape, bytes) and metadata, written to out. */
int dl_cmd_inspect(int argc, char **argv, FILE *out);

/* danlu run --model PATH --component C --inputs IN --out OUT: one network on given tensors. */
int dl_cmd_run(int argc, char **argv, FILE *out);
/* danlu tokenize (--model PATH | --tokenizer PATH) "prompt": CLIP token ids. */
int dl_cmd_tokenize(int argc, char **argv, FILE *out);

/* danlu sample --model PATH --prompt TEXT [...]: txt2img / img2img to A1111-tagged PNGs. */
int dl_cmd_sample(int argc, char **argv, FILE *out);
/* danlu grid --model PATH --x KIND:V1,V2.. [--y KIND:..]: one labelled X/Y grid PNG. */
int dl_cmd_grid(int argc, char **argv, FILE *out);

/* danlu train [--config FILE.json] [--option value ...]: LoRA training (sd-scripts option names). */
int dl_cmd_train(int argc, char **argv, FILE *out);
/* danlu finetune [--config FILE.json] [--option value ...]: full fine-tuning of the UNet, saved as a
 * checkpoint (sd-scripts' fine_tune.py option names). */
int dl_cmd_finetune(int argc, char **argv, FILE *out);
/* `danlu train-vae`: every weight of a checkpoint's VAE (reconstruction + KL), saved in the checkpoint. */
int dl_cmd_train_vae(int argc, char **argv, FILE *out);

/* danlu lora merge|resize|extract ...: the LoRA tools (lora/lora_tools.h, lora/ckpt_tools.h);
 * dl_cmd_lora dispatches, the others take argv[0] = the subcommand name. */
int dl_cmd_lora(int argc, char **argv, FILE *out);
int dl_cmd_lora_merge(int argc, char **argv, FILE *out);
int dl_cmd_lora_resize(int argc, char **argv, FILE *out);
int dl_cmd_lora_extract(int argc, char **argv, FILE *out);
/* danlu convert IN --out OUT: checkpoint layouts and dtypes, LoRA key layouts. */
int dl_cmd_convert(int argc, char **argv, FILE *out);
/* danlu verify FILE [--dataset DIR] [--reproduce]: a trained LoRA's provenance record (0 the same,
 * 1 different, 2 trouble, as diff(1)). */
int dl_cmd_verify(int argc, char **argv, FILE *out);
/* "fp32" / "fp16" / "bf16" -> the dtype, "keep" (or NULL) -> -1, anything else -> -2. */
int dl_cli_dtype(const char *s);

/* The option tables of each command, what its parser and its --help walk (obj pointers NULL;
 * the command points them at its own argument structs). Fill sets (at most DL_CMD_MAX_OPTSETS)
 * and return their number. `danlu train` and `danlu finetune` read train/config.h's table instead. */
#define DL_CMD_MAX_OPTSETS 4
int dl_sample_optsets(dl_optset *sets);
int dl_grid_optsets(dl_optset *sets);
int dl_run_optsets(dl_optset *sets);
int dl_inspect_optsets(dl_optset *sets);
int dl_tokenize_optsets(dl_optset *sets);
int dl_lora_merge_optsets(dl_optset *sets);
int dl_lora_resize_optsets(dl_optset *sets);
int dl_lora_extract_optsets(dl_optset *sets);
int dl_convert_optsets(dl_optset *sets);
int dl_verify_optsets(dl_optset *sets);

#endif
