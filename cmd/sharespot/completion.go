package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/alecthomas/kong"
)

// CompletionCmd prints a shell completion script.
type CompletionCmd struct {
	Shell string `arg:"" enum:"bash,zsh,fish" help:"The shell: bash, zsh or fish."`
}

// Run writes the script for the command line this binary parses (the
// device build's has the device build's commands).
func (c *CompletionCmd) Run(env *runEnv, kctx *kong.Context) error {
	return writeCompletion(env.stdout, c.Shell, completionModel(kctx.Model))
}

// compNode is one command as completion sees it: its path from the root
// ("" for the root, "wallet balance"), its subcommands, its flags and
// those of the commands above it (kong takes those after it too), and the
// values its positional argument may take.
type compNode struct {
	path  string
	cmds  []compItem
	flags []compFlag
	args  []string // an enum positional's values
}

type compItem struct{ name, help string }

type compFlag struct {
	long, help string
	short      rune
	value      bool     // takes a value (the next word, or --flag=value)
	enum       []string // the values it may take, if an enum
}

// completionModel walks kong's model of the command line: every visible
// command, depth first.
func completionModel(app *kong.Application) []compNode {
	var out []compNode
	var walk func(n *kong.Node, path string)
	walk = func(n *kong.Node, path string) {
		cn := compNode{path: path}
		for _, ch := range n.Children {
			if ch.Type == kong.CommandNode && !ch.Hidden {
				cn.cmds = append(cn.cmds, compItem{ch.Name, ch.Help})
			}
		}
		seen := map[string]bool{}
		addFlag := func(f *kong.Flag) {
			if f == nil || f.Hidden || seen[f.Name] {
				return
			}
			seen[f.Name] = true
			cf := compFlag{long: f.Name, help: f.Help, short: f.Short, value: !f.IsBool() && !f.IsCounter()}
			if f.Enum != "" {
				cf.enum = f.EnumSlice()
			}
			cn.flags = append(cn.flags, cf)
		}
		addFlag(app.HelpFlag)
		for _, group := range n.AllFlags(true) {
			for _, f := range group {
				addFlag(f)
			}
		}
		for _, p := range n.Positional {
			if p.Enum != "" {
				cn.args = append(cn.args, p.EnumSlice()...)
			}
		}
		out = append(out, cn)
		for _, ch := range n.Children {
			if ch.Type == kong.CommandNode && !ch.Hidden {
				walk(ch, strings.TrimSpace(path+" "+ch.Name))
			}
		}
	}
	walk(app.Node, "")
	return out
}

// writeCompletion writes shell's script for nodes.
func writeCompletion(w io.Writer, shell string, nodes []compNode) error {
	switch shell {
	case "bash":
		_, err := io.WriteString(w, bashCompletion(nodes))
		return err
	case "zsh":
		_, err := io.WriteString(w, zshCompletion(nodes))
		return err
	case "fish":
		_, err := io.WriteString(w, fishCompletion(nodes))
		return err
	}
	return fmt.Errorf("completion: no script for %q; want bash, zsh or fish", shell)
}

// shellTables are the functions bash and zsh share (their case
// statements read alike): for a command path, its subcommands
// (_sharespot_cmds), its flags (_sharespot_flags), the flags that take a
// value (_sharespot_valued), and the values of an enum flag or argument
// (_sharespot_values "PATH|--flag", "PATH|" for the argument).
func shellTables(nodes []compNode) string {
	var b strings.Builder
	table := func(name string, rows [][2]string) {
		fmt.Fprintf(&b, "%s() {\n  case \"$1\" in\n", name)
		for _, r := range rows {
			if r[1] != "" {
				fmt.Fprintf(&b, "    %s) echo %s ;;\n", shQuote(r[0]), shQuote(r[1]))
			}
		}
		b.WriteString("  esac\n}\n")
	}
	var cmds, flags, valued, values [][2]string
	for _, n := range nodes {
		var c, f, v []string
		for _, s := range n.cmds {
			c = append(c, s.name)
		}
		for _, fl := range n.flags {
			f = append(f, "--"+fl.long)
			if fl.short != 0 {
				f = append(f, "-"+string(fl.short))
			}
			if fl.value {
				v = append(v, "--"+fl.long)
				if fl.short != 0 {
					v = append(v, "-"+string(fl.short))
				}
			}
			if len(fl.enum) > 0 {
				values = append(values, [2]string{n.path + "|--" + fl.long, strings.Join(fl.enum, " ")})
				if fl.short != 0 {
					values = append(values, [2]string{n.path + "|-" + string(fl.short), strings.Join(fl.enum, " ")})
				}
			}
		}
		if len(n.args) > 0 {
			values = append(values, [2]string{n.path + "|", strings.Join(n.args, " ")})
		}
		cmds = append(cmds, [2]string{n.path, strings.Join(c, " ")})
		flags = append(flags, [2]string{n.path, strings.Join(f, " ")})
		valued = append(valued, [2]string{n.path, strings.Join(v, " ")})
	}
	table("_sharespot_cmds", cmds)
	table("_sharespot_flags", flags)
	table("_sharespot_valued", valued)
	table("_sharespot_values", values)
	return b.String()
}

// shQuote quotes s for a POSIX shell (and fish, for what we quote: no
// backslashes, no single quotes in names).
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// shellWalk is the body of bash's and zsh's loop over the words before the
// cursor (w): a valued flag skips the next word, a subcommand of cmdpath
// extends it.
const shellWalk = `    if ((skip)); then skip=0; continue; fi
    case "$w" in
      --*=*) ;;
      -*) [[ " $(_sharespot_valued "$cmdpath") " == *" $w "* ]] && skip=1 ;;
      *) [[ " $(_sharespot_cmds "$cmdpath") " == *" $w "* ]] && cmdpath="${cmdpath:+$cmdpath }$w" ;;
    esac
  done
`

// bashCompletion is the bash script: `source <(sharespot completion bash)`.
func bashCompletion(nodes []compNode) string {
	return `# bash completion for sharespot (generated by "sharespot completion bash").
# Load it with: source <(sharespot completion bash)
` + shellTables(nodes) + `
# _sharespot walks the words before the cursor to the command they name
# (cmdpath), skipping flags and their values, then offers what may come
# next: a flag's values, the command's flags, subcommands or arguments.
_sharespot() {
  local cur="${COMP_WORDS[COMP_CWORD]}" prev="" cmdpath="" i w skip=0
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="${COMP_WORDS[i]}"
` + shellWalk + `  prev="${COMP_WORDS[COMP_CWORD-1]}"
  # --flag=value: bash splits it at "=".
  if [[ "$cur" == "=" ]]; then cur=""; skip=1
  elif [[ "$prev" == "=" ]]; then prev="${COMP_WORDS[COMP_CWORD-2]}"; skip=1; fi
  if ((skip)); then
    local values
    values="$(_sharespot_values "$cmdpath|$prev")"
    if [[ -n "$values" ]]; then
      COMPREPLY=($(compgen -W "$values" -- "$cur"))
    else
      COMPREPLY=($(compgen -f -- "$cur"))
    fi
    return 0
  fi
  if [[ "$cur" == -* ]]; then
    COMPREPLY=($(compgen -W "$(_sharespot_flags "$cmdpath")" -- "$cur"))
  else
    COMPREPLY=($(compgen -W "$(_sharespot_cmds "$cmdpath") $(_sharespot_values "$cmdpath|")" -- "$cur"))
  fi
  return 0
}
complete -F _sharespot sharespot
`
}

// zshCompletion is the zsh script: `source <(sharespot completion zsh)`
// after compinit, or saved as _sharespot on $fpath.
func zshCompletion(nodes []compNode) string {
	var desc strings.Builder
	desc.WriteString("_sharespot_describe() {\n  case \"$1\" in\n")
	for _, n := range nodes {
		if len(n.cmds) == 0 {
			continue
		}
		var items []string
		for _, c := range n.cmds {
			items = append(items, shQuote(c.name+":"+oneLine(c.help)))
		}
		fmt.Fprintf(&desc, "    %s) reply=(%s) ;;\n", shQuote(n.path), strings.Join(items, " "))
	}
	desc.WriteString("    *) reply=() ;;\n  esac\n}\n")
	return `#compdef sharespot
# zsh completion for sharespot (generated by "sharespot completion zsh").
# Load it with: source <(sharespot completion zsh) (after compinit), or
# save it as _sharespot in a directory on $fpath.
` + shellTables(nodes) + desc.String() + `
_sharespot() {
  local cur="${words[CURRENT]}" prev="${words[CURRENT-1]}" cmdpath="" w skip=0 i
  local -a reply values
  for ((i = 2; i < CURRENT; i++)); do
    w="${words[i]}"
` + shellWalk + `  if [[ "$cur" == --*=* ]]; then
    values=(${=$(_sharespot_values "$cmdpath|${cur%%=*}")})
    if ((${#values})); then compadd -P "${cur%%=*}=" -- $values; else _files; fi
    return
  fi
  if ((skip)); then
    values=(${=$(_sharespot_values "$cmdpath|$prev")})
    if ((${#values})); then compadd -- $values; else _files; fi
    return
  fi
  if [[ "$cur" == -* ]]; then
    compadd -- ${=$(_sharespot_flags "$cmdpath")}
    return
  fi
  _sharespot_describe "$cmdpath"
  if ((${#reply})); then _describe command reply; fi
  values=(${=$(_sharespot_values "$cmdpath|")})
  if ((${#values})); then compadd -- $values; fi
}
if [[ "$funcstack[1]" == _sharespot ]]; then
  _sharespot "$@"
else
  compdef _sharespot sharespot
fi
`
}

// fishCompletion is the fish script: `sharespot completion fish | source`.
func fishCompletion(nodes []compNode) string {
	var b strings.Builder
	b.WriteString(`# fish completion for sharespot (generated by "sharespot completion fish").
# Load it with: sharespot completion fish | source

# __sharespot_path prints the command the words before the cursor name.
function __sharespot_path
    set -l words (commandline -opc)
    set -e words[1]
    set -l cmdpath ''
    set -l skip 0
    for w in $words
        if test $skip = 1
            set skip 0
            continue
        end
        switch $w
            case '--*=*'
            case '-*'
                if contains -- $w (__sharespot_valued $cmdpath)
                    set skip 1
                end
            case '*'
                if contains -- $w (__sharespot_cmds $cmdpath)
                    set cmdpath (string trim -- "$cmdpath $w")
                end
        end
    end
    echo $cmdpath
end

# __sharespot_at PATH: the cursor is at command PATH.
function __sharespot_at
    set -l p (__sharespot_path)
    test "$p" = "$argv[1]"
end
`)
	fishTable := func(name string, rows [][2]string) {
		fmt.Fprintf(&b, "\nfunction %s\n    switch \"$argv[1]\"\n", name)
		for _, r := range rows {
			if r[1] != "" {
				fmt.Fprintf(&b, "        case %s\n            string split ' ' -- %s\n", fishQuote(r[0]), fishQuote(r[1]))
			}
		}
		b.WriteString("    end\nend\n")
	}
	var cmds, valued [][2]string
	for _, n := range nodes {
		var c, v []string
		for _, s := range n.cmds {
			c = append(c, s.name)
		}
		for _, f := range n.flags {
			if f.value {
				v = append(v, "--"+f.long)
				if f.short != 0 {
					v = append(v, "-"+string(f.short))
				}
			}
		}
		cmds = append(cmds, [2]string{n.path, strings.Join(c, " ")})
		valued = append(valued, [2]string{n.path, strings.Join(v, " ")})
	}
	fishTable("__sharespot_cmds", cmds)
	fishTable("__sharespot_valued", valued)
	b.WriteString("\ncomplete -c sharespot -f\n")
	for _, n := range nodes {
		cond := fishQuote("__sharespot_at " + fishQuote(n.path))
		for _, c := range n.cmds {
			fmt.Fprintf(&b, "complete -c sharespot -n %s -a %s -d %s\n", cond, fishQuote(c.name), fishQuote(oneLine(c.help)))
		}
		if len(n.args) > 0 {
			fmt.Fprintf(&b, "complete -c sharespot -n %s -a %s\n", cond, fishQuote(strings.Join(n.args, " ")))
		}
		for _, f := range n.flags {
			line := fmt.Sprintf("complete -c sharespot -n %s -l %s", cond, fishQuote(f.long))
			if f.short != 0 {
				line += " -s " + string(f.short)
			}
			switch {
			case len(f.enum) > 0:
				line += " -x -a " + fishQuote(strings.Join(f.enum, " "))
			case f.value:
				line += " -r -F"
			}
			b.WriteString(line + " -d " + fishQuote(oneLine(f.help)) + "\n")
		}
	}
	return b.String()
}

// fishQuote quotes s for fish: in single quotes, \ and ' are escaped.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// oneLine is a help text's first sentence, for a one-line description.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	for i := 0; i+2 < len(s); i++ { // a sentence ends at ". " before a capital ("e.g. 5" goes on)
		if s[i] == '.' && s[i+1] == ' ' && 'A' <= s[i+2] && s[i+2] <= 'Z' {
			s = s[:i]
			break
		}
	}
	s = strings.TrimSuffix(s, ".")
	if r := []rune(s); len(r) > 80 {
		s = string(r[:79]) + "…"
	}
	return s
}
