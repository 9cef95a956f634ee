/* Runs a command and writes its peak RSS (KiB, from wait4) to the file in argv[1].
 *
 * A process's peak RSS counts the memory of the process it was forked from until its exec,
 * so a command spawned straight from the Python harness would report Python's 15 MiB. This
 * launcher is small and static, so what it reports is the command's own peak (plus at most
 * this launcher's few hundred KiB, the same for every runtime). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: maxrss OUTFILE COMMAND [ARGS...]\n");
        return 2;
    }
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        execv(argv[2], argv + 2);
        perror(argv[2]);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("wait4");
        return 2;
    }
    FILE *f = fopen(argv[1], "w");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    fprintf(f, "%ld\n", ru.ru_maxrss);
    fclose(f);
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    return 128 + WTERMSIG(status);
}
