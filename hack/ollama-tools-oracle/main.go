// Command ollama-tools-oracle reads tool calls out of model output with Ollama's own tools
// package, the parser Ollama's chat route runs on a model's output when tools are given.
//
// It reads a JSON array of cases from stdin, each {"template": ..., "tag": ..., "tools": [...],
// "inputs": ["piece", ...]}: with a template the parser derives its tag from it (NewParser), else
// it uses the tag given (NewParserWithTag). It writes a JSON array of results, each {"content":
// what Add returned, "rest": what Content returns at the end, "calls": [{"name", "arguments",
// "index"}]} or {"error": ...}. The test suite compares its Python parser with it.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/template"
	"github.com/ollama/ollama/tools"
)

type request struct {
	Template *string   `json:"template"`
	Tag      string    `json:"tag"`
	Tools    api.Tools `json:"tools"`
	Inputs   []string  `json:"inputs"`
}

type call struct {
	Name      string                        `json:"name"`
	Arguments api.ToolCallFunctionArguments `json:"arguments"`
	Index     int                           `json:"index"`
}

type result struct {
	Content string  `json:"content"`
	Rest    string  `json:"rest"`
	Calls   []call  `json:"calls"`
	Error   *string `json:"error,omitempty"`
}

func parse(r request) (res result) {
	defer func() {
		if p := recover(); p != nil {
			msg := fmt.Sprint("panic: ", p)
			res = result{Error: &msg}
		}
	}()
	var parser *tools.Parser
	if r.Template != nil {
		tmpl, err := template.Parse(*r.Template)
		if err != nil {
			msg := err.Error()
			return result{Error: &msg}
		}
		parser = tools.NewParser(tmpl.Template, r.Tools)
	} else {
		parser = tools.NewParserWithTag(r.Tools, r.Tag)
	}
	res.Calls = []call{}
	for _, input := range r.Inputs {
		calls, content := parser.Add(input)
		res.Content += content
		for _, c := range calls {
			res.Calls = append(res.Calls, call{c.Function.Name, c.Function.Arguments, c.Function.Index})
		}
	}
	res.Rest = parser.Content()
	return res
}

func main() {
	var reqs []request
	if err := json.NewDecoder(os.Stdin).Decode(&reqs); err != nil {
		fmt.Fprintln(os.Stderr, "reading cases:", err)
		os.Exit(2)
	}
	out := make([]result, len(reqs))
	for i, r := range reqs {
		out[i] = parse(r)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "writing results:", err)
		os.Exit(2)
	}
}
