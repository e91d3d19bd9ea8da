/* cmd_train.c - `danlu train` (LoRA training) and `danlu finetune` (full fine-tuning of the
 * UNet), with sd-scripts' option names (JSON config and/or command-line flags): one key table
 * (train/config.c), each command showing and accepting its own keys. */
#include "cli/commands.h"

#include "core/error.h"
#include "train/config.h"
#include "train/trainer.h"
#include "train/vae_trainer.h"

#include <string.h>

/* "default: X" / "required" of a key as the help shows it. */
static void key_tail(const dl_train_key *k, char *buf, size_t cap)
{
    if (k->required) snprintf(buf, cap, "required");
    else if (k->kind == DL_TKEY_BOOL) snprintf(buf, cap, "default: %s", k->def && !strcmp(k->def, "true") ? "on" : "off");
    else if (k->def) snprintf(buf, cap, "default: %s", k->def);
    else snprintf(buf, cap, "default: %s", k->optional ? "unset" : "none");
}

static void key_entry(FILE *f, const dl_train_key *k, int with_tail)
{
    char flag[128], tail[128], meaning[512];
    snprintf(flag, sizeof flag, "--%s%s%s", k->name, k->meta ? " " : "", k->meta ? k->meta : "");
    key_tail(k, tail, sizeof tail);
    size_t n = (size_t)snprintf(meaning, sizeof meaning, "%s", k->help);
    const char *values = k->values;
    if (values && k->kind == DL_TKEY_LIST) {
        /* a list's values are the KEYs of its KEY=VALUE elements */
        n += (size_t)snprintf(meaning + n, sizeof meaning - n, "; KEY one of:");
        for (const char *p = values; *p && n < sizeof meaning;) {
            size_t l = strcspn(p, "|");
            n += (size_t)snprintf(meaning + n, sizeof meaning - n, " %.*s%s", (int)l, p, p[l] ? "," : "");
            p += l + (p[l] ? 1 : 0);
        }
        values = NULL;
    }
    dl_help_entry(f, flag, meaning, values, with_tail ? tail : NULL);
}

/* 1 when name is a key of the command (then it is not listed among the ignored flags) */
static int is_key_of(const char *name, int ft)
{
    for (int i = 0; i < dl_train_config_n_keys(); i++)
        if (!strcmp(dl_train_config_key(i)->name, name)) return dl_train_key_applies(dl_train_config_key(i), ft);
    return 0;
}

static void train_usage(FILE *f, int ft)
{
    if (ft == DL_TRAIN_VAE)
        fprintf(f,
                "usage: danlu train-vae [--config FILE.json] [--option value | --option=value | --flag] ...\n\n"
                "Trains every weight of a checkpoint's VAE (AutoencoderKL: encoder, decoder, quant convs) on a folder\n"
                "of images with loss = per-pixel MSE of the reconstruction + kl_weight x KL of the posterior (per\n"
                "sample, batch mean), the latent sampled from the posterior with the run's seeded generator; saves\n"
                "the whole checkpoint with the trained VAE (--save_model_as safetensors: one file in the SD layout;\n"
                "diffusers: a folder). Options are those of danlu finetune that concern images and the optimizer,\n"
                "named as in kohya-ss/sd-scripts; they are also the keys of the JSON file; flags override the file.\n"
                "Captions, the text encoder, the noise schedule and sample images do not apply.\n");
    else if (ft)
        fprintf(f,
                "usage: danlu finetune [--config FILE.json] [--option value | --option=value | --flag] ...\n\n"
                "Fine-tunes every weight of a Stable Diffusion 1.x/2.x checkpoint's UNet on a folder of images and\n"
                "captions (sd-scripts' fine_tune.py / train_db.py) and saves the whole model as a checkpoint\n"
                "(--save_model_as safetensors: one file in the SD layout; diffusers: a folder). Options are\n"
                "named as in kohya-ss/sd-scripts and are also the keys of the JSON file; flags override the\n"
                "file. A boolean --flag may be followed by true or false; an option shown \"default: unset\" is\n"
                "off until given (\"none\" unsets it); a list option takes every following value up to the next\n"
                "--option. Dashes in names are read as underscores.\n");
    else
        fprintf(f,
                "usage: danlu train [--config FILE.json] [--option value | --option=value | --flag] ...\n\n"
                "Trains a LoRA for a Stable Diffusion 1.x/2.x checkpoint on a folder of images and captions.\n"
                "Options are named as in kohya-ss/sd-scripts (train_network.py) and are also the keys of the\n"
                "JSON file; flags override the file. A boolean --flag may be followed by true or false; an\n"
                "option shown \"default: unset\" is off until given (\"none\" unsets it); a list option takes\n"
                "every following value up to the next --option. Dashes in names are read as underscores.\n");
    for (int g = 0; g < dl_train_config_n_groups(); g++) {
        int any = g + 1 == dl_train_config_n_groups();
        for (int i = 0; i < dl_train_config_n_file_flags(); i++) any |= dl_train_config_file_flag(i)->group == g;
        for (int i = 0; i < dl_train_config_n_keys(); i++)
            any |= dl_train_config_key(i)->group == g && dl_train_key_applies(dl_train_config_key(i), ft);
        if (!any) continue;
        fprintf(f, "\n%s:\n", dl_train_config_group_name(g));
        for (int i = 0; i < dl_train_config_n_file_flags(); i++)
            if (dl_train_config_file_flag(i)->group == g) key_entry(f, dl_train_config_file_flag(i), 0);
        for (int i = 0; i < dl_train_config_n_keys(); i++)
            if (dl_train_config_key(i)->group == g && dl_train_key_applies(dl_train_config_key(i), ft))
                key_entry(f, dl_train_config_key(i), 1);
        if (g + 1 < dl_train_config_n_groups()) continue;
        /* the last heading ("other") also lists the help flag and the ignored sd-scripts flags */
        const dl_opt *h = &dl_opt_help_table[0];
        char flag[64];
        snprintf(flag, sizeof flag, "%s, %s", h->alias, h->name);
        dl_help_entry(f, flag, h->help, NULL, NULL);
        char ign[1024];
        size_t n = (size_t)snprintf(ign, sizeof ign, "sd-scripts options that do not apply here, accepted with a "
                                                     "warning and ignored:");
        for (int i = 0; i < dl_train_config_n_ignored() && n < sizeof ign; i++)
            if (!is_key_of(dl_train_config_ignored(i), ft))
                n += (size_t)snprintf(ign + n, sizeof ign - n, " --%s", dl_train_config_ignored(i));
        dl_help_entry(f, "(ignored)", ign, NULL, NULL);
    }
    fprintf(f, "\nCtrl-C saves a resumable state (<output_name>-state.safetensors) and exits.\n");
}

static int run_command(int argc, char **argv, FILE *out, int ft)
{
    const char *cmd = ft == DL_TRAIN_VAE ? "train-vae" : ft ? "finetune" : "train";
    dl_optset help = {dl_opt_help_table, 1, NULL, 0, NULL};
    for (int i = 1; i < argc; i++)
        if (dl_opt_find(&help, 1, argv[i], NULL)) { train_usage(out, ft); return 0; }
    if (argc < 2) { train_usage(stderr, ft); return 2; }
    dl_train_config cfg;
    dl_train_config_defaults_for(&cfg, ft);
    if (dl_train_config_parse_args(&cfg, argc, argv, stderr) != DL_OK) {
        fprintf(stderr, "danlu %s: %s\n", cmd, dl_error_msg());
        dl_train_config_free(&cfg);
        return 1;
    }
    fprintf(stderr, "danlu %s: configuration\n", cmd);
    dl_train_config_print(&cfg, stderr);
    dl_trainer_opts opts = {.log = stderr, .tty = -1};
    dl_train_result res;
    int rc = ft == DL_TRAIN_VAE ? dl_vae_train_run(&cfg, &opts, &res) : dl_train_run(&cfg, &opts, &res);
    dl_train_config_free(&cfg);
    if (rc != DL_OK) {
        fprintf(stderr, "danlu %s: %s\n", cmd, dl_error_msg());
        return 1;
    }
    if (res.interrupted) fprintf(out, "interrupted: state %s\n", res.output_path);
    else fprintf(out, "%s\n", res.output_path);
    dl_train_result_free(&res);
    return 0;
}

int dl_cmd_train(int argc, char **argv, FILE *out) { return run_command(argc, argv, out, 0); }

int dl_cmd_finetune(int argc, char **argv, FILE *out) { return run_command(argc, argv, out, 1); }

int dl_cmd_train_vae(int argc, char **argv, FILE *out) { return run_command(argc, argv, out, DL_TRAIN_VAE); }
