/*
 * A stand-in for pyxis and CSCS's Container Engine (built on pyxis), for the project's Slurm labs:
 * a SPANK plugin named "pyxis", so its options travel as pyxis's do (sbatch/salloc put them in the
 * job's environment as SLURM_SPANK__SLURM_SPANK_OPTION_pyxis_<option>, every later srun reads them
 * back as options), with the CE's and pyxis's option names:
 *
 *   --environment=EDF          the container's Environment Definition File (TOML: image, mounts,
 *                              workdir, writable, [env])
 *   --container-image=DIR      an image: here a root filesystem directory (pyxis: a registry image
 *                              or a squashfs file)
 *   --container-mounts=SRC[:DST[:ro]][,...]
 *   --container-workdir=DIR
 *   --container-writable
 *
 * A value given twice is refused as pyxis refuses it ("--environment specified multiple times"),
 * unless it is the same value (Slurm calls an option's callback again for the copy in the
 * environment). Each task of a step that names an image enters a container: its own mount namespace,
 * a root built by the runtime (container_root.py: the image as an overlay, the host's /usr
 * read-only, the mounts), then chroot, the image's and the EDF's environment, and the workdir.
 *
 * Plugin arguments (plugstack.conf): runtime=DIR (an empty directory the runtime mounts its tmpfs on),
 * helper=PATH (container_root.py), mounts=SRC[,...] (what every container gets, e.g. the munge socket).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <unistd.h>
#include <sys/mount.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <slurm/slurm.h>
#include <slurm/spank.h>

SPANK_PLUGIN(pyxis, 1);

static char *environment, *image, *mounts, *workdir;
static int writable;
static char *task_workdir; /* where a task starts: Slurm changes to its own cwd after the chroot */
static const char *helper = "/opt/ipcmagic-containers/lib/container_root.py";
static const char *runtime = "/opt/ipcmagic-containers/run";
static const char *system_mounts = "";

static int set_once(char **slot, const char *option, const char *value)
{
	if (value == NULL || *value == '\0') {
		slurm_error("pyxis: --%s: argument required", option);
		return -1;
	}
	/* Slurm can call an option twice with the same value (the command line, then the environment) */
	if (*slot != NULL) {
		if (strcmp(*slot, value) == 0)
			return 0;
		slurm_error("pyxis: --%s specified multiple times", option);
		return -1;
	}
	*slot = strdup(value);
	return *slot == NULL ? -1 : 0;
}

static int on_environment(int val, const char *optarg, int remote)
{
	return set_once(&environment, "environment", optarg);
}

static int on_image(int val, const char *optarg, int remote)
{
	return set_once(&image, "container-image", optarg);
}

static int on_mounts(int val, const char *optarg, int remote)
{
	return set_once(&mounts, "container-mounts", optarg);
}

static int on_workdir(int val, const char *optarg, int remote)
{
	return set_once(&workdir, "container-workdir", optarg);
}

static int on_writable(int val, const char *optarg, int remote)
{
	writable = 1;
	return 0;
}

/* registered in slurm_spank_init: a table named spank_options reaches srun only, not sbatch/salloc */
static struct spank_option options[] = {
	{"environment", "EDF", "[pyxis stand-in] run in the container of this Environment Definition File",
	 1, 0, on_environment},
	{"container-image", "DIR", "[pyxis stand-in] run in this image (a root filesystem directory)",
	 1, 0, on_image},
	{"container-mounts", "SRC[:DST[:ro]][,...]", "[pyxis stand-in] bind mounts into the container",
	 1, 0, on_mounts},
	{"container-workdir", "DIR", "[pyxis stand-in] working directory inside the container",
	 1, 0, on_workdir},
	{"container-writable", NULL, "[pyxis stand-in] make the container filesystem writable",
	 0, 0, on_writable},
	SPANK_OPTIONS_TABLE_END
};

int slurm_spank_init(spank_t sp, int ac, char **av)
{
	for (struct spank_option *option = options; option->name != NULL; option++) {
		if (spank_option_register(sp, option) != ESPANK_SUCCESS) {
			slurm_error("pyxis: cannot register --%s", option->name);
			return -1;
		}
	}
	for (int i = 0; i < ac; i++) {
		if (strncmp(av[i], "runtime=", 8) == 0)
			runtime = av[i] + 8;
		else if (strncmp(av[i], "helper=", 7) == 0)
			helper = av[i] + 7;
		else if (strncmp(av[i], "mounts=", 7) == 0)
			system_mounts = av[i] + 7;
		else {
			slurm_error("pyxis: unknown plugin argument %s", av[i]);
			return -1;
		}
	}
	return 0;
}

/* srun, sbatch, salloc: an EDF that cannot be read fails the command at once, as the CE's does */
int slurm_spank_init_post_opt(spank_t sp, int ac, char **av)
{
	spank_context_t context = spank_context();

	if ((context == S_CTX_LOCAL || context == S_CTX_ALLOCATOR) && environment != NULL &&
	    access(environment, R_OK) != 0) {
		slurm_error("pyxis: --environment %s: %s", environment, strerror(errno));
		return -1;
	}
	return 0;
}

/* Run the runtime; apply its "env NAME=VALUE" and "workdir DIR" lines; relay its error lines. */
static int build_root(spank_t sp, char **dir)
{
	uid_t uid;
	gid_t gid;
	uint32_t rank, world, step;
	int local_rank, out[2], err[2], status, argc;
	char ids[5][32], cwd[4096], line[8192], **argv, *script = NULL;
	pid_t pid;

	if (spank_get_item(sp, S_JOB_UID, &uid) || spank_get_item(sp, S_JOB_GID, &gid) ||
	    spank_get_item(sp, S_TASK_GLOBAL_ID, &rank) || spank_get_item(sp, S_TASK_ID, &local_rank) ||
	    spank_get_item(sp, S_JOB_TOTAL_TASK_COUNT, &world) || spank_get_item(sp, S_JOB_STEPID, &step))
		return -1;
	/* the batch script, from slurmd's spool directory, mounted where it is (as pyxis does) */
	if (step == SLURM_BATCH_SCRIPT) {
		if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) || argc == 0)
			return -1;
		script = argv[0];
		world = 1;
	}
	snprintf(ids[0], 32, "%u", uid);
	snprintf(ids[1], 32, "%u", gid);
	snprintf(ids[2], 32, "%u", rank);
	snprintf(ids[3], 32, "%d", local_rank);
	snprintf(ids[4], 32, "%u", world);
	if (getcwd(cwd, sizeof(cwd)) == NULL)
		strcpy(cwd, "/");
	if (pipe(out) || pipe(err))
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		char *args[40];
		int n = 0;
		const char *pairs[][2] = {
			{"--edf", environment}, {"--image", image}, {"--mounts", mounts},
			{"--workdir", workdir}, {"--system-mounts", system_mounts},
			{"--runtime", runtime}, {"--cwd", cwd}, {"--uid", ids[0]}, {"--gid", ids[1]},
			{"--rank", ids[2]}, {"--local-rank", ids[3]}, {"--world-size", ids[4]},
		};
		args[n++] = "/usr/bin/python3";
		args[n++] = "-I";
		args[n++] = (char *)helper;
		for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
			if (pairs[i][1] != NULL && *pairs[i][1] != '\0') {
				args[n++] = (char *)pairs[i][0];
				args[n++] = (char *)pairs[i][1];
			}
		}
		if (script != NULL) {
			args[n++] = "--system-mounts";
			args[n++] = script;
		}
		if (writable)
			args[n++] = "--writable";
		args[n] = NULL;
		dup2(out[1], 1);
		dup2(err[1], 2);
		close(out[0]);
		close(err[0]);
		execv(args[0], args);
		_exit(127);
	}
	close(out[1]);
	close(err[1]);
	FILE *said = fdopen(out[0], "r"), *failed = fdopen(err[0], "r");
	while (fgets(line, sizeof(line), said) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		if (strncmp(line, "env ", 4) == 0) {
			char *value = strchr(line + 4, '=');
			if (value != NULL) {
				*value++ = '\0';
				spank_setenv(sp, line + 4, value, 1);
			}
		} else if (strncmp(line, "workdir ", 8) == 0) {
			*dir = strdup(line + 8);
		}
	}
	while (fgets(line, sizeof(line), failed) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		slurm_error("%s", line);
	}
	fclose(said);
	fclose(failed);
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0 || *dir == NULL)
		return -1;
	return 0;
}

/* Each task: its own mount namespace, its container root, chroot. */
int slurm_spank_task_init_privileged(spank_t sp, int ac, char **av)
{
	char root[4096];

	if (environment == NULL && image == NULL)
		return 0;
	if (unshare(CLONE_NEWNS) != 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
		slurm_error("pyxis: cannot make the container's mount namespace: %s", strerror(errno));
		return -1;
	}
	if (build_root(sp, &task_workdir) != 0) {
		slurm_error("pyxis: could not start the container");
		return -1;
	}
	snprintf(root, sizeof(root), "%s/root", runtime);
	if (chroot(root) != 0 || chdir("/") != 0) {
		slurm_error("pyxis: cannot enter the container: %s", strerror(errno));
		return -1;
	}
	return 0;
}

/* ... and its workdir, as the user, after Slurm's own chdir */
int slurm_spank_task_init(spank_t sp, int ac, char **av)
{
	if (task_workdir != NULL && chdir(task_workdir) != 0) {
		slurm_error("pyxis: --container-workdir %s: %s", task_workdir, strerror(errno));
		return -1;
	}
	return 0;
}
